"""HTTP endpoints of the caller's own inbox."""

import uuid

from litestar import Controller, get, post
from litestar.di import Provide

from app.notifications import services
from app.notifications.schemas import NotificationRead, UnreadCount
from app.pagination import DEFAULT_LIMIT, Limit, Page
from app.security import AuthUser, current_user


class NotificationController(Controller):
    path = "/v1/notifications"
    tags = ["notifications"]
    dependencies = {"user": Provide(current_user)}

    @get("/", operation_id="listNotifications")
    async def list_notifications(
        self, user: AuthUser, unread: bool | None = None, limit: Limit = DEFAULT_LIMIT, cursor: str | None = None
    ) -> Page[NotificationRead]:
        """The caller's in-app notifications, newest first; `unread=true` for unread ones only."""
        items, next_cursor = await services.list_notifications(user, unread, limit, cursor)
        return Page(items=items, next_cursor=next_cursor)

    @get("/unread-count", operation_id="countUnreadNotifications")
    async def unread_count(self, user: AuthUser) -> UnreadCount:
        """How many of the caller's notifications are unread."""
        return await services.unread_count(user)

    @post("/{notification_id:uuid}/read", operation_id="readNotification", status_code=200)
    async def read(self, user: AuthUser, notification_id: uuid.UUID) -> NotificationRead:
        """Mark one notification read."""
        return await services.mark_read(user, notification_id)

    @post("/read-all", operation_id="readAllNotifications", status_code=200)
    async def read_all(self, user: AuthUser) -> UnreadCount:
        """Mark all the caller's notifications read."""
        return await services.mark_all_read(user)
