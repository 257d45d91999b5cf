"""HTTP endpoints of webhooks: admins, and service tokens whose scope has `webhooks:manage`."""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Controller, Request, delete, get, patch, post
from litestar.connection import ASGIConnection
from litestar.di import Provide

from app.idempotency import IdempotencyKey, Remember, run_once
from app.pagination import DEFAULT_LIMIT, Limit, Page
from app.security import WEBHOOKS_SCOPE, admin_or_service, once_per_request
from app.webhooks import services
from app.webhooks.schemas import DeliveryRead, WebhookCreate, WebhookCreated, WebhookRead, WebhookUpdate

_CALLERS = uuid.UUID("0b8f5d0c-8f5e-4b9a-9b2e-6a1f3c7d2e41")


@once_per_request("webhook_manager")
async def webhook_manager(request: ASGIConnection[Any, Any, Any, Any]) -> uuid.UUID:
    """Dependency: who manages webhooks — an admin (their id) or a service token with
    `webhooks:manage` (an id made from its `sub`, to scope Idempotency-Key); 401/403 otherwise."""
    caller = await admin_or_service(request, WEBHOOKS_SCOPE, "manage webhooks")
    return uuid.uuid5(_CALLERS, f"service:{caller}") if isinstance(caller, str) else caller.id


class WebhookController(Controller):
    path = "/v1/webhooks"
    tags = ["webhooks"]
    dependencies = {"manager": Provide(webhook_manager)}

    @post("/", operation_id="createWebhook", status_code=201)
    async def create_webhook(self, manager: uuid.UUID, data: WebhookCreate, request: Request,
                             idempotency_key: IdempotencyKey = None) -> WebhookCreated:
        """Create a webhook; the answer carries its signing secret, shown this once."""
        allow_private = request.app.state.settings.webhook_allow_private

        async def create(remember: Remember | None) -> WebhookCreated:
            created = await services.create_webhook(data, allow_private)
            if remember is not None:
                await remember(created)
            return created

        return await run_once(manager, idempotency_key, "createWebhook", data, create, WebhookCreated)

    @get("/", operation_id="listWebhooks")
    async def list_webhooks(self, manager: uuid.UUID, limit: Limit = DEFAULT_LIMIT,
                            cursor: str | None = None) -> Page[WebhookRead]:
        """List webhooks, oldest first (without their secrets)."""
        items, next_cursor = await services.list_webhooks(limit, cursor)
        return Page(items=items, next_cursor=next_cursor)

    @get("/{webhook_id:uuid}", operation_id="getWebhook")
    async def get_webhook(self, manager: uuid.UUID, webhook_id: uuid.UUID) -> WebhookRead:
        """Read one webhook."""
        return await services.get_webhook(webhook_id)

    @patch("/{webhook_id:uuid}", operation_id="updateWebhook")
    async def update_webhook(self, manager: uuid.UUID, webhook_id: uuid.UUID, data: WebhookUpdate,
                             request: Request) -> WebhookRead:
        """Change a webhook's URL, event types or whether it is active."""
        return await services.update_webhook(webhook_id, data, request.app.state.settings.webhook_allow_private)

    @delete("/{webhook_id:uuid}", operation_id="deleteWebhook")
    async def delete_webhook(self, manager: uuid.UUID, webhook_id: uuid.UUID) -> None:
        """Delete a webhook and its delivery log; what was not sent yet is dropped."""
        await services.delete_webhook(webhook_id)

    @get("/{webhook_id:uuid}/deliveries", operation_id="listWebhookDeliveries")
    async def list_deliveries(self, manager: uuid.UUID, webhook_id: uuid.UUID, limit: Limit = DEFAULT_LIMIT,
                              cursor: str | None = None) -> Page[DeliveryRead]:
        """List a webhook's deliveries, newest first."""
        items, next_cursor = await services.list_deliveries(webhook_id, limit, cursor)
        return Page(items=items, next_cursor=next_cursor)

    @post("/{webhook_id:uuid}/deliveries/{delivery_id:uuid}/retry", operation_id="retryWebhookDelivery",
          status_code=202)
    async def retry_delivery(self, manager: uuid.UUID, webhook_id: uuid.UUID, delivery_id: uuid.UUID,
                             request: Request) -> DeliveryRead:
        """Send a delivery again now, whatever its status (one more attempt)."""
        state: Any = request.app.state
        return await services.retry_delivery(webhook_id, delivery_id, state.settings.webhook_retry_intervals,
                                             state.bus.redis)
