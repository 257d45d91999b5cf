"""Expiring a pending booking at its response deadline: the body of the `expire_booking` job.

The deadline's job is planned by `app.bookings.reminders.plan_deadline`; the sweep (app/maintenance.py)
re-enqueues it should it go missing, so the deadline is checked again under the booking's lock and a
late or repeated job does nothing. A pooled booking moves on instead while its pool has room.
"""

from __future__ import annotations

import uuid

from app.bookings import services as bookings
from app.effects import Effects
from app.errors import Conflict, NotFound


async def expire_booking(effects: Effects, booking_id: str) -> None:
    """Expire (or move on) a booking still pending at its response deadline."""
    try:
        await bookings.transition(None, uuid.UUID(booking_id), "expire", None, effects)
    except (Conflict, NotFound, bookings.NotDue):
        pass  # answered in the meantime, moved on, or not due (any more)
