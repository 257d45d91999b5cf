"""Creating, listing and reading notifications. Creation also publishes `notification.created`
(through the outbox of the change that created them)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from app.db.prepared import insert_rows
from app.db.tables import Notification
from app.errors import NotFound
from app.notifications.schemas import NotificationRead, UnreadCount
from app.outbox.change import Change
from app.pagination import keyset_page
from app.realtime.events import user_channel
from app.security import AuthUser


def to_notification_read(row: dict[str, Any]) -> NotificationRead:
    data = row["data"]
    raw = msgspec.Raw(data.encode() if isinstance(data, str) else msgspec.json.encode(data))
    return NotificationRead(id=row["id"], type=row["type"], title=row["title"], body=row["body"], data=raw,
                            created_at=row["created_at"], read_at=row["read_at"])


@dataclass(frozen=True)
class NewNotification:
    """One inbox item to create."""

    user_id: uuid.UUID
    kind: str
    title: str
    body: str
    data: Any


async def notify_each(change: Change, items: list[NewNotification]) -> None:
    """Store `items` in one INSERT inside `change`, each announced once the change is committed."""
    if not items:
        return
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = [
        {"id": uuid.uuid4(), "user_id": item.user_id, "type": item.kind, "title": item.title[:200],
         "body": item.body, "data": msgspec.json.encode(item.data).decode(), "created_at": now, "read_at": None}
        for item in items
    ]
    await insert_rows(Notification, rows)
    for row in rows:
        change.publish("notification.created", [user_channel(row["user_id"])], to_notification_read(row))


async def list_notifications(
    user: AuthUser, unread: bool | None, limit: int, cursor: str | None
) -> tuple[list[NotificationRead], str | None]:
    """The caller's notifications, newest first."""
    query = Notification.select().where(Notification.user_id == user.id)
    if unread is True:
        query = query.where(Notification.read_at.is_null())
    elif unread is False:
        query = query.where(Notification.read_at.is_not_null())
    rows, next_cursor = await keyset_page(query, Notification, limit, cursor, newest_first=True)
    return [to_notification_read(r) for r in rows], next_cursor


async def unread_count(user: AuthUser) -> UnreadCount:
    count = await Notification.count().where(Notification.user_id == user.id, Notification.read_at.is_null())
    return UnreadCount(unread=count)


async def mark_read(user: AuthUser, notification_id: uuid.UUID) -> NotificationRead:
    """Mark one of the caller's notifications read (again is harmless: the first read time stays)."""
    await Notification.update({Notification.read_at: datetime.now(UTC)}).where(
        Notification.id == notification_id, Notification.user_id == user.id, Notification.read_at.is_null()
    )
    row = await Notification.select().where(
        Notification.id == notification_id, Notification.user_id == user.id
    ).first()
    if row is None:
        raise NotFound("No notification with this id.")
    return to_notification_read(row)


async def mark_all_read(user: AuthUser) -> UnreadCount:
    await Notification.update({Notification.read_at: datetime.now(UTC)}).where(
        Notification.user_id == user.id, Notification.read_at.is_null()
    )
    return UnreadCount(unread=0)
