"""What happens after a booking change is committed: its event, the resource's availability event,
and in-app notifications for the people it concerns.

Everything here runs after the database transaction, so no client hears about a change that did not
happen. A Redis failure is logged and counted, never turned into an error for a change that is
already stored: clients that missed the event resynchronise over REST.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from app.bookings.schemas import BookingRead
from app.bookings.seats import availability_of
from app.db.tables import Resource
from app.notifications.services import notify
from app.realtime.bus import EventBus
from app.realtime.events import resource_channel, role_channel, user_channel

log = logging.getLogger(__name__)

Window = tuple[datetime, datetime]

# event type -> (notification title, verb for the body)
_NOTICES = {
    "booking.created": ("New booking", "was requested"),
    "booking.confirmed": ("Booking confirmed", "was confirmed"),
    "booking.rejected": ("Booking rejected", "was rejected"),
    "booking.cancelled": ("Booking cancelled", "was cancelled"),
    "booking.rescheduled": ("Booking rescheduled", "was moved"),
    "booking.updated": ("Booking updated", "was updated"),
    "booking.checked_in": ("Checked in", "was checked in"),
    "booking.completed": ("Booking completed", "was completed"),
    "booking.expired": ("Booking expired", "expired without an answer"),
}


def booking_channels(booking: BookingRead) -> list[str]:
    return [user_channel(booking.customer_id), user_channel(booking.owner_id), role_channel("admin")]


async def _resource(resource_id: uuid.UUID) -> dict[str, Any]:
    row = await Resource.select(Resource.name, Resource.timezone, Resource.capacity).where(
        Resource.id == resource_id
    ).first()
    return row or {"name": "a resource", "timezone": "UTC", "capacity": 0}


def describe(booking: BookingRead, resource: dict[str, Any]) -> str:
    """`Room A on 2030-01-01 10:00 (Europe/Paris)`: what people recognise a booking by."""
    local = booking.starts_at.astimezone(ZoneInfo(resource["timezone"]))
    return f"{resource['name']} on {local:%Y-%m-%d %H:%M} ({resource['timezone']})"


async def booking_changed(
    bus: EventBus, booking: BookingRead, event_type: str, actor_id: uuid.UUID | None, seat_windows: list[Window],
) -> None:
    """Publish `event_type`, availability for the windows whose seats changed, and notifications."""
    try:
        await bus.publish(event_type, booking_channels(booking), booking)
        for start, end in _merge(seat_windows):
            await bus.publish("resource.availability", [resource_channel(booking.resource_id)],
                              await availability_of(booking.resource_id, start, end))
        resource = await _resource(booking.resource_id)
        title, verb = _NOTICES[event_type]
        body = f"Your booking of {describe(booking, resource)} {verb}. Booking {booking.id}."
        recipients = [u for u in (booking.customer_id, booking.owner_id) if u != actor_id]
        await notify(bus, recipients, event_type, title, body, booking)
    except Exception:
        log.exception("could not announce %s for booking %s", event_type, booking.id)


def _merge(windows: list[Window]) -> list[Window]:
    merged: list[Window] = []
    for start, end in sorted(windows):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged
