"""The events of a booking change — its own, the resource's availability — and the in-app
notifications for the people it concerns, recorded in the change's transaction (the outbox
publishes them once it commits, so no client hears of a change that did not happen, and none misses
one that did)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from app.bookings.parties import Parties
from app.bookings.schemas import BookingRead
from app.notifications.services import NewNotification, notify_each
from app.outbox.change import Change
from app.realtime.events import resource_channel, role_channel, user_channel
from app.resources.schemas import Availability
from app.resources.seats import availability_of

Window = tuple[datetime, datetime]

# event type -> (title, body) of the in-app notification, worded for each recipient: the booking is
# the customer's ("Your booking of …"); the owner reads who did what on their resource. `{booking}`
# is `describe(…)`, `{customer}` the customer's name, `{by}` who acted when it was not the reader's
# counterpart alone (" by the customer", " by the provider", " by an administrator").
_CUSTOMER_NOTICES = {
    "booking.created": ("New booking", "Your booking of {booking} was requested."),
    "booking.confirmed": ("Booking confirmed", "Your booking of {booking} was confirmed."),
    "booking.rejected": ("Booking rejected", "Your booking of {booking} was rejected."),
    "booking.cancelled": ("Booking cancelled", "Your booking of {booking} was cancelled{by}."),
    "booking.rescheduled": ("Booking rescheduled", "Your booking was moved to {booking}{by}."),
    "booking.updated": ("Booking updated", "Your booking of {booking} was updated{by}."),
    "booking.checked_in": ("Checked in", "You are checked in for {booking}."),
    "booking.completed": ("Booking completed", "Your booking of {booking} is completed."),
    "booking.expired": ("Booking expired", "Your request for {booking} expired without an answer."),
}
_OWNER_NOTICES = {
    "booking.created": ("New booking request", "{customer} requested {booking}. Please confirm or reject it."),
    "booking.confirmed": ("Booking confirmed", "{customer}'s booking of {booking} was confirmed{by}."),
    "booking.rejected": ("Booking rejected", "{customer}'s booking of {booking} was rejected{by}."),
    "booking.cancelled": ("Booking cancelled", "{customer}'s booking of {booking} was cancelled{by}."),
    "booking.rescheduled": ("Booking rescheduled", "{customer}'s booking was moved to {booking}{by}."),
    "booking.updated": ("Booking updated", "{customer}'s booking of {booking} was updated{by}."),
    "booking.checked_in": ("Checked in", "{customer} is checked in for {booking}."),
    "booking.completed": ("Booking completed", "{customer}'s booking of {booking} is completed."),
    "booking.expired": ("Booking request expired", "{customer}'s request for {booking} expired without an answer."),
}
# A booking confirmed at once (`requires_confirmation: false`) asks nothing of its owner.
_OWNER_INSTANT = ("New booking", "{customer} booked {booking}; it is confirmed.")


def booking_channels(booking: BookingRead) -> list[str]:
    return [user_channel(booking.customer_id), user_channel(booking.owner_id), role_channel("admin")]


def describe(booking: BookingRead, resource: dict[str, Any]) -> str:
    """`Room A on 2030-01-01 10:00 (Europe/Paris)`: what people recognise a booking by."""
    local = booking.starts_at.astimezone(ZoneInfo(resource["timezone"]))
    return f"{resource['name']} on {local:%Y-%m-%d %H:%M} ({resource['timezone']})"


async def booking_changed(
    change: Change, booking: BookingRead, event_type: str, seat_windows: list[Window],
    availability: Availability | None = None,
) -> None:
    """Publish `event_type`, and the availability the change left: `availability` when the change
    knows it already, else read for each window whose seats changed (inside the change's
    transaction, under the resource's lock)."""
    change.publish(event_type, booking_channels(booking), booking)
    left = [availability] if availability else [
        await availability_of(booking.resource_id, start, end) for start, end in _merge(seat_windows)]
    for each in left:
        change.publish("resource.availability", [resource_channel(booking.resource_id)], each)


async def notify_parties(
    change: Change, booking: BookingRead, parties: Parties, event_type: str, actor_id: uuid.UUID | None
) -> None:
    """The in-app notifications of a change: the customer and the owner, except whoever made it."""
    await notify_each(change, _notices(booking, parties, event_type, actor_id))


def _notices(
    booking: BookingRead, parties: Parties, event_type: str, actor_id: uuid.UUID | None
) -> list[NewNotification]:
    """The customer's and the owner's notification of a change, except for whoever made it."""
    resource, people = parties
    by = ("" if actor_id is None else " by the customer" if actor_id == booking.customer_id
          else " by the provider" if actor_id == booking.owner_id else " by an administrator")
    words = {"booking": describe(booking, resource), "customer": people["customer"]["name"],
             "by": by}
    owner_notice = _OWNER_NOTICES[event_type]
    if event_type == "booking.created" and booking.status == "confirmed":
        owner_notice = _OWNER_INSTANT
    notices: list[NewNotification] = []
    for user_id, (title, body) in ((booking.customer_id, _CUSTOMER_NOTICES[event_type]),
                                   (booking.owner_id, owner_notice)):
        if user_id != actor_id and all(n.user_id != user_id for n in notices):
            text = f"{body.format(**words)} Booking {booking.id}."
            notices.append(NewNotification(user_id, event_type, title, text, booking))
    return notices


def _merge(windows: list[Window]) -> list[Window]:
    merged: list[Window] = []
    for start, end in sorted(windows):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged
