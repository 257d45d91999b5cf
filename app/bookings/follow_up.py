"""Everything a booking change sets in motion, in one place: its events and in-app notifications,
its emails, its reminders and its response deadline — recorded inside the change's transaction, so
that they happen exactly when the change commits."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from app.bookings.emails import queue_booking_emails
from app.bookings.events import Window, booking_changed, notify_parties
from app.bookings.parties import booking_parties
from app.bookings.reminders import plan_deadline, plan_reminders
from app.bookings.schemas import BookingRead
from app.outbox.change import Change
from app.resources.schemas import Availability
from app.settings import Settings


async def follow_up(
    change: Change, settings: Settings, booking: BookingRead, event_type: str, actor_id: uuid.UUID | None,
    seat_windows: list[Window], reason: str | None = None, resource: dict[str, Any] | None = None,
    availability: Availability | None = None, people: dict[str, dict[str, Any]] | None = None,
    offered_at: datetime | None = None,
) -> None:
    """Publish, notify, mail and (re)schedule after `event_type`, inside the change's transaction.
    `seat_windows`: the windows whose seats changed; `resource`, `availability` and `people`: the
    resource's row (name, timezone, response deadline), the availability left and the customer and
    owner (as `booking_parties` gives them), when the change has them; `offered_at`: when a pooled
    booking's current owner was asked, once it has moved on (its response deadline runs from then)."""
    await booking_changed(change, booking, event_type, seat_windows, availability)
    # once, for the notifications and the emails
    parties = (resource, people) if resource and people else await booking_parties(booking, resource)
    await notify_parties(change, booking, parties, event_type, actor_id)
    await queue_booking_emails(change, settings, booking, parties, event_type, reason)
    await plan_reminders(change, settings, booking, event_type)
    plan_deadline(change, booking, event_type, resource["response_deadline_seconds"] if resource else None,
                  offered_at)
