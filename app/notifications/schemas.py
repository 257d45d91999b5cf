"""Wire types of the notifications area."""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec


class NotificationRead(msgspec.Struct):
    id: uuid.UUID
    type: str
    title: str
    body: str
    data: msgspec.Raw
    created_at: datetime
    read_at: datetime | None


class UnreadCount(msgspec.Struct):
    unread: int
