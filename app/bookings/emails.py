"""Which emails a booking change sends, and what their templates are given.

Each email is queued through `app.email.services.queue_emails` (a row, and a job in the change's
outbox); a reminder's email is built from the same `booking_context` (app/bookings/reminders.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from app.bookings.parties import Parties
from app.bookings.schemas import BookingRead
from app.email.services import NewEmail, queue_emails
from app.outbox.change import Change
from app.settings import Settings

# event type -> who gets an email (the spec's list: customer for every change, owner for three)
RECIPIENTS: dict[str, tuple[str, ...]] = {
    "booking.created": ("customer", "owner"),
    "booking.confirmed": ("customer",),
    "booking.rejected": ("customer",),
    "booking.cancelled": ("customer", "owner"),
    "booking.rescheduled": ("customer", "owner"),
    "booking.completed": ("customer",),
    "booking.expired": ("customer",),
}


def local_time(moment: datetime, timezone: str) -> str:
    """`2030-01-01 10:00`: `moment` on the clock of `timezone`, as emails show times."""
    return f"{moment.astimezone(ZoneInfo(timezone)):%Y-%m-%d %H:%M}"


def booking_context(
    booking: BookingRead, resource: dict[str, Any], people: dict[str, dict[str, Any]], recipient_role: str,
    reason: str | None, app_url: str,
) -> dict[str, Any]:
    """Everything a booking email template may use (see app.email.rendering.SAMPLE_CONTEXT)."""
    recipient = people[recipient_role]
    return {
        "app_url": app_url,
        "link": f"{app_url}/bookings/{booking.id}",
        "recipient": {"name": recipient["name"], "email": recipient["email"], "role": recipient_role},
        "customer": {"name": people["customer"]["name"], "email": people["customer"]["email"]},
        "owner": {"name": people["owner"]["name"], "email": people["owner"]["email"]},
        "resource": {"id": str(resource["id"]), "name": resource["name"], "timezone": resource["timezone"]},
        "booking": {
            "id": str(booking.id), "status": booking.status, "seats": booking.seats, "notes": booking.notes,
            "starts_at": booking.starts_at.isoformat(), "ends_at": booking.ends_at.isoformat(),
            "starts_at_local": local_time(booking.starts_at, resource["timezone"]),
            "ends_at_local": local_time(booking.ends_at, resource["timezone"]),
            "price_cents": booking.price_cents, "currency": booking.currency,
        },
        "reason": reason,
    }


async def queue_booking_emails(
    change: Change, settings: Settings, booking: BookingRead, parties: Parties, event_type: str, reason: str | None
) -> None:
    """The emails of one booking change, per the spec's list; none to a deactivated account."""
    roles = RECIPIENTS.get(event_type, ())
    if not roles:
        return
    resource, people = parties
    await queue_emails(change, settings, [
        NewEmail(f"{event_type}.{role}", people[role]["email"],
                 booking_context(booking, resource, people, role, reason, settings.app_url), booking.id)
        for role in roles if people[role]["active"]
    ])
