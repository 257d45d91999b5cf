"""Expiring a pending booking at its response deadline: the body of the `expire_booking` job.

The deadline's job is planned by `app.bookings.reminders.plan_deadline`; the sweep (app/maintenance.py)
re-enqueues it should it go missing, so this re-checks everything and is idempotent.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from app.bookings import services as bookings
from app.db.tables import Booking, Resource
from app.effects import Effects
from app.errors import Conflict


async def expire_booking(effects: Effects, booking_id: str) -> None:
    """Expire a booking still pending at its response deadline (re-checked here, under the lock)."""
    row = await Booking.select(Booking.status, Booking.created_at, Booking.resource_id).where(
        Booking.id == uuid.UUID(booking_id)).first()
    if row is None or row["status"] != "pending":
        return
    resource = await Resource.select(Resource.response_deadline_seconds).where(
        Resource.id == row["resource_id"]).first()
    seconds = resource["response_deadline_seconds"] if resource else None
    if not seconds or row["created_at"] + timedelta(seconds=seconds) > datetime.now(UTC) + timedelta(seconds=1):
        return  # no deadline any more, or not yet (the sweep comes back)
    try:
        await bookings.transition(None, uuid.UUID(booking_id), "expire", None, effects)
    except Conflict:
        pass  # confirmed, rejected or cancelled in the meantime
