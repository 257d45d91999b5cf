"""Wire types of reminders."""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec


class ReminderRead(msgspec.Struct):
    id: uuid.UUID
    recipient_id: uuid.UUID
    recipient_role: str
    offset_seconds: int
    due_at: datetime
    status: str
    fired_at: datetime | None
