"""A booking's history: one entry per change, written in the change's transaction."""

from __future__ import annotations

import uuid
from datetime import datetime

from app.db.prepared import insert_rows
from app.db.tables import BookingHistory


async def record(booking_id: uuid.UUID, action: str, actor_id: uuid.UUID | None, from_status: str | None,
                 to_status: str, reason: str | None, at: datetime) -> None:
    """Append one entry (`actor_id` None: the system)."""
    await insert_rows(BookingHistory, [{
        "id": uuid.uuid4(), "booking_id": booking_id, "action": action, "actor_id": actor_id,
        "from_status": from_status, "to_status": to_status, "reason": reason, "at": at,
    }])
