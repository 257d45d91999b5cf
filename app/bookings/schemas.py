"""Wire types of the bookings area."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from app.bookings.status import Status
from app.wire import AwareDatetime, FreeText, Reason, Seats

Action = Literal["create", "confirm", "reject", "cancel", "reschedule", "update", "check-in", "complete", "expire",
                 "reassign"]
ReminderStatus = Literal["scheduled", "sent", "cancelled", "failed"]


class BookingCreate(msgspec.Struct, forbid_unknown_fields=True):
    """A booking of `resource_id`, or of `pool_id` (Bookwire picks the resource): one of the two."""

    starts_at: AwareDatetime
    ends_at: AwareDatetime
    resource_id: uuid.UUID | None = None
    pool_id: uuid.UUID | None = None
    seats: Seats = 1
    notes: FreeText = ""
    customer_id: uuid.UUID | None = None
    """Admins only: the customer the booking is made for."""


class BookingUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """Reschedule (`starts_at`/`ends_at`) and/or change `notes`; left-out fields stay."""

    starts_at: AwareDatetime | msgspec.UnsetType = msgspec.UNSET
    ends_at: AwareDatetime | msgspec.UnsetType = msgspec.UNSET
    notes: FreeText | msgspec.UnsetType = msgspec.UNSET


class ActionRequest(msgspec.Struct, forbid_unknown_fields=True):
    reason: Reason | None = None


class BookingRead(msgspec.Struct):
    id: uuid.UUID
    resource_id: uuid.UUID
    customer_id: uuid.UUID
    owner_id: uuid.UUID
    starts_at: datetime
    ends_at: datetime
    seats: int
    notes: str
    status: Status
    price_cents: Annotated[int, msgspec.Meta(description="The resource's price times `seats`, copied at booking.")]
    currency: str
    version: Annotated[int, msgspec.Meta(description="Grows by one with every change; events of a booking come in "
                                                      "this order.")]
    created_at: datetime
    updated_at: datetime
    pool_id: uuid.UUID | None = None
    """The pool it was requested from (it may move on within it), or null."""
    offered_at: datetime | None = None
    """When the current owner was asked: `created_at`, or the last move of a pooled request. A
    pending booking's time left to answer runs from here (its resource's response deadline)."""


class ReassignedBooking(BookingRead, kw_only=True):
    """`booking.reassigned`'s data: the booking after the move, and where it was before."""

    from_resource_id: uuid.UUID
    from_owner_id: uuid.UUID


class HistoryEntry(msgspec.Struct):
    id: uuid.UUID
    action: Action
    actor_id: Annotated[uuid.UUID | None, msgspec.Meta(description="Who acted; null for the system.")]
    from_status: Status | None
    to_status: Status
    reason: str | None
    at: datetime


class ReminderRead(msgspec.Struct):
    id: uuid.UUID
    recipient_id: uuid.UUID
    recipient_role: Literal["owner", "customer"]
    offset_seconds: Annotated[int, msgspec.Meta(description="How long before `starts_at` it is due.")]
    due_at: datetime
    status: ReminderStatus
    fired_at: datetime | None


class ReminderDue(msgspec.Struct):
    """`reminder.due`'s data (and its notification's): the reminder that fired and its booking."""

    reminder: ReminderRead
    booking: BookingRead


def to_booking_read(row: dict[str, Any]) -> BookingRead:
    """A `bookings` row as the API shows it."""
    read = BookingRead(**{name: row[name] for name in BookingRead.__struct_fields__ if name != "offered_at"})
    read.offered_at = row.get("offered_at") or row["created_at"]  # a row being inserted has none yet
    return read


def to_reminder_read(row: dict[str, Any]) -> ReminderRead:
    """A `reminders` row as the API shows it."""
    return ReminderRead(**{name: row[name] for name in ReminderRead.__struct_fields__})
