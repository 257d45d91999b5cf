"""A pooled request moving on: when its owner rejects it or lets its response deadline pass, it is
offered to the next resource of its pool with room that has not been offered it yet — one change:
the booking's resource, owner and price, a `reassign` history entry, `booking.reassigned`, the
availability of both resources, notifications and emails to the customer and both owners, and the
new owner's response deadline. Only when no such resource is left does the rejection or expiry
happen as for any booking (app/bookings/services.py decides which).

The previous owner loses access at once: who may see a booking and its conversation is decided by
its current `owner_id`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from app.bookings import history
from app.bookings.emails import booking_context, local_time
from app.bookings.events import describe
from app.bookings.placement import pick_from_pool
from app.bookings.reminders import plan_deadline
from app.bookings.schemas import BookingRead, ReassignedBooking, to_booking_read
from app.db.prepared import insert_rows
from app.db.tables import Booking, BookingOffer, Resource, User
from app.email.services import NewEmail, queue_emails
from app.job_queue import expiry_job_id
from app.notifications.services import NewNotification, notify_each
from app.outbox.change import Change
from app.realtime.events import resource_channel, role_channel, user_channel
from app.resources.seats import availability_from, availability_of
from app.settings import Settings

MOVES_ON = frozenset({"reject", "expire"})
"""The actions after which a pooled booking moves on instead of ending, while its pool has room."""


async def record_offer(booking_id: uuid.UUID, resource_id: uuid.UUID, at: datetime) -> None:
    """Remember that a pooled booking was offered to `resource_id` (it is not offered there again)."""
    await insert_rows(BookingOffer, [{"id": uuid.uuid4(), "booking_id": booking_id, "resource_id": resource_id,
                                      "offered_at": at}])


async def move_on(
    change: Change, settings: Settings, row: dict[str, Any], action: str, actor_id: uuid.UUID | None,
    reason: str | None,
) -> BookingRead | None:
    """Under the pool's, the resource's and the booking's locks: move the pending pooled booking
    `row` on after `action` (reject or expire). The booking after the move, or None when no resource
    of the pool with room is left to offer it to."""
    offered = {o["resource_id"] for o in await BookingOffer.select(BookingOffer.resource_id).where(
        BookingOffer.booking_id == row["id"])} | {row["resource_id"]}
    now = datetime.now(UTC)
    picked = await pick_from_pool(row["pool_id"], row["starts_at"], row["ends_at"], row["seats"], offered, now)
    if picked is None:
        return None
    resource, holders = picked
    values = {"resource_id": resource["id"], "owner_id": resource["owner_id"], "status": "pending",
              "price_cents": resource["price_cents"] * row["seats"], "currency": resource["currency"],
              "version": row["version"] + 1, "updated_at": now, "offered_at": now}
    await Booking.update(values).where(Booking.id == row["id"])  # type: ignore[arg-type]
    await record_offer(row["id"], resource["id"], now)
    await history.record(row["id"], "reassign", actor_id, row["status"], "pending", reason, now)
    booking = to_booking_read({**row, **values})
    moved = ReassignedBooking(**{f: getattr(booking, f) for f in BookingRead.__struct_fields__},
                              from_resource_id=row["resource_id"], from_owner_id=row["owner_id"])
    change.publish("booking.reassigned", [user_channel(booking.customer_id), user_channel(row["owner_id"]),
                                          user_channel(booking.owner_id), role_channel("admin")], moved)
    window = (booking.starts_at, booking.ends_at)
    change.publish("resource.availability", [resource_channel(row["resource_id"])],
                   await availability_of(row["resource_id"], *window))
    change.publish("resource.availability", [resource_channel(resource["id"])], availability_from(
        resource["id"], resource["capacity"], [*holders, (*window, booking.seats)], *window))
    await _tell_people(change, settings, booking, moved, resource, action, actor_id, reason)
    change.cancel(expiry_job_id(row["id"], row["offered_at"]))  # the previous owner's deadline
    plan_deadline(change, booking, "booking.reassigned", resource["response_deadline_seconds"], now)
    return booking


async def _tell_people(
    change: Change, settings: Settings, booking: BookingRead, moved: ReassignedBooking, resource: dict[str, Any],
    action: str, actor_id: uuid.UUID | None, reason: str | None,
) -> None:
    """Notifications (except to whoever acted) and emails to the customer and both owners."""
    (was,) = await Resource.select(Resource.id, Resource.name, Resource.timezone).where(
        Resource.id == moved.from_resource_id)
    users = {u["id"]: u for u in await User.select(User.id, User.name, User.email, User.active).where(
        User.id.is_in([booking.customer_id, booking.owner_id, moved.from_owner_id]))}
    customer, owner, previous = users[booking.customer_id], users[booking.owner_id], users[moved.from_owner_id]
    before, after = describe(booking, was), describe(booking, resource)
    why = (" after it got no answer in time" if action == "expire" else
           " after you declined it" if actor_id == moved.from_owner_id else " by an administrator")
    notices = [
        (customer, "Request passed on",
         f"Your request for {before} was passed on to another provider: {after}. It waits for their answer."),
        (previous, "Request passed on", f"{customer['name']}'s request for {before} went to another provider{why}."),
        (owner, "New booking request", f"{customer['name']} requested {after}. Please confirm or reject it."),
    ]
    await notify_each(change, [NewNotification(person["id"], "booking.reassigned", title,
                                               f"{body} Booking {booking.id}.", moved)
                               for person, title, body in notices if person["id"] != actor_id])
    # The template's `resource` and `owner` are where the booking is now; `reassignment` says where it
    # was, and `recipient.role` which of the three this is (`previous_owner` for the one it left).
    people = {"customer": customer, "owner": owner, "previous_owner": previous}
    reassignment = {
        "from_resource": {"id": str(was["id"]), "name": was["name"], "timezone": was["timezone"],
                          "starts_at_local": local_time(booking.starts_at, was["timezone"]),
                          "ends_at_local": local_time(booking.ends_at, was["timezone"])},
        "from_owner": {"name": previous["name"], "email": previous["email"]},
        "expired": action == "expire",
    }
    emails = []
    for role, key in (("customer", "booking.reassigned.customer"), ("owner", "booking.reassigned.owner"),
                      ("previous_owner", "booking.reassigned.owner")):
        if people[role]["active"]:
            context = booking_context(booking, resource, people, role, reason, settings.app_url)
            emails.append(NewEmail(key, people[role]["email"], {**context, "reassignment": reassignment},
                                   booking.id))
    await queue_emails(change, settings, emails)
