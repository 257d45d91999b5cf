"""The event catalogue: every event type Bookwire publishes, the msgspec type of its `data`, and
the channels it goes to (SPEC "Events"). The AsyncAPI document is generated from this table, and
the types are the ones the publishing code passes to `publish`, so a changed payload changes the
document; tests/integration/test_api_description.py fails when a type published in app/ is missing."""

from __future__ import annotations

from typing import Any

import msgspec

from app.admin.controllers import Announcement
from app.bookings.schemas import BookingRead, ReassignedBooking, ReminderDue
from app.conversations.schemas import MessageRead, Receipt, Typing
from app.email.schemas import EmailFailedAlert
from app.notifications.schemas import NotificationRead
from app.realtime.events import PresenceChanged, StreamClosing, StreamReset
from app.resources.schemas import Availability, ResourceRead


class EventKind(msgspec.Struct, frozen=True):
    """One event type: its payload type, where it goes, and what it means."""

    data: Any
    channels: tuple[str, ...]
    summary: str
    ephemeral: bool = False


BOOKING_CHANNELS = ("user", "role")
RESOURCE_CHANNELS = ("resource", "role")
SystemAlert = EmailFailedAlert
"""`system.alert`'s data: a tagged union on `kind` (one member so far)."""

_BOOKING_EVENTS = {
    "booking.created": "A booking was requested (its data says `confirmed` when no confirmation is needed).",
    "booking.confirmed": "The owner or an admin confirmed the booking.",
    "booking.rejected": "The owner or an admin rejected the booking.",
    "booking.cancelled": "The customer, the owner or an admin cancelled the booking.",
    "booking.rescheduled": "The booking's times changed.",
    "booking.updated": "The booking's notes changed.",
    "booking.checked_in": "The customer was checked in.",
    "booking.completed": "The booking was completed.",
    "booking.expired": "The owner did not answer within the resource's response deadline.",
}
_RESOURCE_EVENTS = {
    "resource.created": "A resource was created.",
    "resource.updated": "A resource changed (other than its price).",
    "resource.deleted": "A resource was deleted.",
    "resource.pricing_updated": "A resource's price or currency changed.",
}

CATALOGUE: dict[str, EventKind] = {
    **{t: EventKind(BookingRead, BOOKING_CHANNELS, s) for t, s in _BOOKING_EVENTS.items()},
    "booking.reassigned": EventKind(ReassignedBooking, BOOKING_CHANNELS,
                                    "A pooled request moved to another resource of its pool."),
    **{t: EventKind(ResourceRead, RESOURCE_CHANNELS, s) for t, s in _RESOURCE_EVENTS.items()},
    "resource.availability": EventKind(Availability, ("resource",),
                                       "The seats left changed over a window (the availability of that window)."),
    "notification.created": EventKind(NotificationRead, ("user",), "An in-app notification for the recipient."),
    "reminder.due": EventKind(ReminderDue, ("user",), "A reminder of a confirmed booking fired."),
    "announcement": EventKind(Announcement, ("broadcast", "role"), "An admin's announcement."),
    "system.alert": EventKind(SystemAlert, ("role",), "Something needs an admin (e.g. an email failed for good)."),
    "message.created": EventKind(MessageRead, ("user",), "A message in a booking's conversation."),
    "message.receipt": EventKind(Receipt, ("user",), "A participant received or read messages."),
    "conversation.typing": EventKind(Typing, ("user",), "Another participant is typing.", ephemeral=True),
    "presence.changed": EventKind(PresenceChanged, ("user",),
                                  "Someone who shares an active booking with you came online or went offline.",
                                  ephemeral=True),
    "stream.reset": EventKind(StreamReset, (), "Replay is impossible: refetch over REST, go on from `cursor`."),
    "stream.closing": EventKind(StreamClosing, (), "The server ends the stream; reconnect with the last id.",
                                ephemeral=True),
}
"""Control events (`stream.*`) have no channel: `channel` is null in their envelope."""
