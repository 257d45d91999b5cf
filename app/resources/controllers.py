"""HTTP endpoints for resources and their availability."""

import uuid
from datetime import datetime
from typing import Annotated

from litestar import Controller, delete, get, patch, post
from litestar.di import Provide
from litestar.params import Parameter

from app.effects import Effects, provide_effects
from app.idempotency import IdempotencyKey, run_once
from app.pagination import DEFAULT_LIMIT, Limit, Page
from app.resources import services
from app.resources.schemas import Availability, ResourceCreate, ResourceRead, ResourceUpdate
from app.security import AuthUser, current_user
from app.wire import NO_CONTROLS


class ResourceController(Controller):
    path = "/v1/resources"
    tags = ["resources"]
    dependencies = {"user": Provide(current_user), "effects": Provide(provide_effects)}

    @post("/", operation_id="createResource", status_code=201)
    async def create_resource(
        self, user: AuthUser, effects: Effects, data: ResourceCreate, idempotency_key: IdempotencyKey = None,
    ) -> ResourceRead:
        """Create a resource (providers, admins). Publishes `resource.created`."""
        return await run_once(user.id, idempotency_key, "createResource", data,
                              lambda remember: services.create_resource(user, data, effects, remember), ResourceRead)

    @get("/", operation_id="listResources")
    async def list_resources(
        self, user: AuthUser, owner_id: uuid.UUID | None = None,
        kind: Annotated[str | None, Parameter(max_length=100, pattern=NO_CONTROLS)] = None,
        limit: Limit = DEFAULT_LIMIT, cursor: str | None = None,
    ) -> Page[ResourceRead]:
        """Resources the caller may see: active ones, and their own or (admins) all inactive ones."""
        items, next_cursor = await services.list_resources(user, owner_id, kind, limit, cursor)
        return Page(items=items, next_cursor=next_cursor)

    @get("/{resource_id:uuid}", operation_id="getResource")
    async def get_resource(self, user: AuthUser, resource_id: uuid.UUID) -> ResourceRead:
        """One resource."""
        return await services.get_resource(user, resource_id)

    @patch("/{resource_id:uuid}", operation_id="updateResource")
    async def update_resource(
        self, user: AuthUser, effects: Effects, resource_id: uuid.UUID, data: ResourceUpdate
    ) -> ResourceRead:
        """Change a resource (its owner, admins). Publishes `resource.updated` and/or `resource.pricing_updated`."""
        return await services.update_resource(user, resource_id, data, effects)

    @delete("/{resource_id:uuid}", operation_id="deleteResource")
    async def delete_resource(self, user: AuthUser, effects: Effects, resource_id: uuid.UUID) -> None:
        """Delete a resource (its owner, admins): 409 while it has active future bookings. Publishes
        `resource.deleted`."""
        await services.delete_resource(user, resource_id, effects)

    @get("/{resource_id:uuid}/availability", operation_id="getAvailability")
    async def resource_availability(
        self, user: AuthUser, resource_id: uuid.UUID,
        from_: Annotated[datetime, Parameter(query="from")], to: datetime,
    ) -> Availability:
        """Seats taken over `[from, to)`: maximal intervals with a constant number of seats taken."""
        return await services.availability(user, resource_id, from_, to)
