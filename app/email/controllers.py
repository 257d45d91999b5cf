"""Admin endpoints: email templates and the delivery log."""

import uuid
from typing import Literal

from litestar import Controller, delete, get, post, put
from litestar.di import Provide

from app.email import services
from app.email.schemas import DeliveryRead, PreviewRead, PreviewRequest, TemplateRead, TemplateWrite
from app.pagination import DEFAULT_LIMIT, Limit, Page
from app.security import admin_only, current_user


class EmailAdminController(Controller):
    path = "/v1/admin"
    tags = ["admin", "email"]
    dependencies = {"user": Provide(current_user)}
    guards = [admin_only]

    @get("/email-templates", operation_id="listEmailTemplates")
    async def list_templates(
        self, limit: Limit = DEFAULT_LIMIT, cursor: str | None = None,
    ) -> Page[TemplateRead]:
        """Every e-mail template as in effect (admins)."""
        items, next_cursor = await services.list_templates(limit, cursor)
        return Page(items=items, next_cursor=next_cursor)

    @get("/email-templates/{key:str}", operation_id="getEmailTemplate")
    async def get_template(self, key: str) -> TemplateRead:
        """One e-mail template as in effect: the admin's override or the default."""
        return await services.get_template(key)

    @put("/email-templates/{key:str}", operation_id="putEmailTemplate")
    async def put_template(self, key: str, data: TemplateWrite) -> TemplateRead:
        """Override an e-mail template (checked by rendering it)."""
        return await services.put_template(key, data)

    @delete("/email-templates/{key:str}", operation_id="resetEmailTemplate")
    async def delete_template(self, key: str) -> None:
        """Return an e-mail template to its default."""
        await services.delete_template(key)

    @post("/email-templates/{key:str}/preview", operation_id="previewEmailTemplate", status_code=200)
    async def preview(self, key: str, data: PreviewRequest | None = None) -> PreviewRead:
        """Render a template with a sample context, or the one given."""
        return PreviewRead(**await services.preview_template(key, data.context if data else None))

    @get("/emails", operation_id="listEmails")
    async def list_emails(
        self, status: Literal["queued", "sent", "failed"] | None = None,
        booking_id: uuid.UUID | None = None, limit: Limit = DEFAULT_LIMIT, cursor: str | None = None,
    ) -> Page[DeliveryRead]:
        """E-mail deliveries, newest first: queued, sent or failed, attempts, last error (admins)."""
        items, next_cursor = await services.list_deliveries(status, booking_id, limit, cursor)
        return Page(items=items, next_cursor=next_cursor)
