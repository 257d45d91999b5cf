"""Everything a committed booking change sets in motion, in one place: its events and in-app
notifications, its emails, its reminders and its response deadline."""

from __future__ import annotations

import logging
import uuid

from app.bookings.emails import queue_booking_emails
from app.bookings.events import Window, booking_changed, notify_parties
from app.bookings.parties import booking_parties
from app.bookings.reminders import plan_deadline, plan_reminders
from app.bookings.schemas import BookingRead
from app.effects import Effects

log = logging.getLogger(__name__)


async def follow_up(
    effects: Effects, booking: BookingRead, event_type: str, actor_id: uuid.UUID | None,
    seat_windows: list[Window], reason: str | None = None,
) -> None:
    """Publish, notify, mail and (re)schedule after `event_type`. The change is already stored, so a
    failure here is logged rather than reported to the client as if the change had not happened."""
    try:
        await booking_changed(effects.bus, booking, event_type, actor_id, seat_windows)
        parties = await booking_parties(booking)  # once, for the notifications and the emails
        await notify_parties(effects.bus, booking, parties, event_type, actor_id)
    except Exception:
        log.exception("could not announce %s of booking %s", event_type, booking.id)
        parties = None
    steps = [(plan_reminders(effects, booking, event_type), "reminders"),
             (plan_deadline(effects, booking, event_type), "deadline")]
    if parties is not None:
        steps.insert(0, (queue_booking_emails(effects, booking, parties, event_type, reason), "emails"))
    for step, name in steps:
        try:
            await step
        except Exception:
            log.exception("could not plan %s after %s of booking %s", name, event_type, booking.id)
