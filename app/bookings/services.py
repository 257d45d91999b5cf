"""Booking rules: creation under the capacity guarantee, the status machine, reschedule, history.

Every change bumps `version` by one and appends a history entry in the same transaction, together
with everything it sets in motion (`follow_up`: events, notifications, emails, reminders, deadline,
recorded in the change's outbox). Every change locks its resource's row before its booking's, so the
availability it announces is the one it left, and events of a resource follow commit order.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from app.bookings import history as booking_history
from app.bookings.follow_up import follow_up
from app.bookings.placement import bookable_resource, check_capacity, pick_from_pool
from app.bookings.reassign import MOVES_ON, move_on, record_offer
from app.bookings.schemas import (
    BookingCreate,
    BookingRead,
    BookingUpdate,
    HistoryEntry,
    ReminderRead,
    to_booking_read,
    to_reminder_read,
)
from app.bookings.status import TRANSITIONS, Transition, allowed_actions, may_take
from app.db.prepared import Prepared, insert_rows
from app.db.tables import Booking, BookingHistory, Pool, Reminder, Resource, User
from app.db.transactions import for_update, lock_row
from app.effects import Effects
from app.errors import Conflict, NotFound, PermissionDenied, Unprocessable
from app.idempotency import Remember
from app.pagination import Condition, keyset_page, prepared_page
from app.resources.capacity import HOLDS_SEATS, Interval
from app.resources.seats import availability_from
from app.resources.services import lock_open_pool
from app.security import AuthUser
from app.validation import to_utc

MAX_BOOKING_LENGTH = timedelta(days=30)
MAX_BOOKING_AHEAD = timedelta(days=2 * 365)
"""How far ahead a booking may start (new or rescheduled): its reminders, emails and availability
windows then stay well inside the calendar (a booking in year 9999 used to be accepted, and then its
follow-ups failed)."""


def relations(user: AuthUser, row: dict[str, Any]) -> set[str]:
    """How the caller relates to a booking: its customer, the resource's owner, an admin."""
    found = set()
    if row["customer_id"] == user.id:
        found.add("customer")
    if row["owner_id"] == user.id:
        found.add("owner")
    if user.is_admin:
        found.add("admin")
    return found


_booking_row = Prepared(Booking, lambda booking_id: Booking.select().where(Booking.id == booking_id).first(),
                        uuid.UUID)
_locked_booking_row = Prepared(Booking, lambda booking_id: for_update(
    Booking.select().where(Booking.id == booking_id), Booking).first(), uuid.UUID)
"""The booking's row, held until commit (racing actions queue here and see each other's result)."""


async def visible_booking(user: AuthUser, booking_id: uuid.UUID) -> dict[str, Any]:
    """The booking's row if the caller is its customer, its (current) owner or an admin, else 404."""
    rows = await _booking_row(booking_id)
    if not rows or not relations(user, rows[0]):
        raise NotFound("No booking with this id.")
    return rows[0]


async def locked_visible_booking(user: AuthUser, booking_id: uuid.UUID) -> dict[str, Any]:
    """Inside a write transaction: `visible_booking`, read under the booking's row lock (held until
    commit) — one statement where a read and then a lock would be two."""
    rows = await _locked_booking_row(booking_id)
    if not rows or not relations(user, rows[0]):
        raise NotFound("No booking with this id.")
    return rows[0]


def _check_interval(starts_at: datetime, ends_at: datetime, now: datetime) -> None:
    if starts_at < now:
        raise Unprocessable.field("starts_at", "must not be in the past")
    if starts_at > now + MAX_BOOKING_AHEAD:
        raise Unprocessable.field("starts_at", "a booking may start at most 2 years (730 days) ahead")
    if ends_at <= starts_at:
        raise Unprocessable.field("ends_at", "must be after starts_at")
    if ends_at - starts_at > MAX_BOOKING_LENGTH:
        raise Unprocessable.field("ends_at", "a booking may last at most 30 days")


async def _customer_for(user: AuthUser, customer_id: uuid.UUID | None) -> uuid.UUID:
    if user.role == "provider":
        raise PermissionDenied("Providers cannot make bookings; sign in as a customer.")
    if user.role == "customer":
        if customer_id not in (None, user.id):
            raise PermissionDenied("Only admins may book for another customer.")
        return user.id
    if customer_id is None:
        raise Unprocessable.field("customer_id", "admins must name the customer the booking is for")
    customer = await User.select(User.role, User.active).where(User.id == customer_id).first()
    if customer is None or customer["role"] != "customer" or not customer["active"]:
        raise Unprocessable.field("customer_id", "must be the id of an active customer")
    return customer_id


def _known_people(user: AuthUser, resource: dict[str, Any]) -> dict[str, dict[str, Any]] | None:
    """The customer and owner of a booking `user` makes for themselves on `resource` (read with its
    owner): both are known without another query, and both are active (the caller is signed in, an
    offered resource's owner is active). None when an admin books for someone else."""
    if user.role != "customer":
        return None
    return {"customer": {"id": user.id, "name": user.name, "email": user.email, "active": True},
            "owner": {"id": resource["owner_id"], "name": resource["owner_name"], "email": resource["owner_email"],
                      "active": True}}


async def _place(data: BookingCreate, starts_at: datetime, ends_at: datetime, now: datetime,
                 ) -> tuple[dict[str, Any], list[Interval]]:
    """The resource the new booking lands on (locked, with `owner_name` and `owner_email`) and the
    other seat holders of its interval; 409 when it has no room, 422 when it takes no bookings."""
    if data.pool_id is None:
        if data.resource_id is None:
            raise Unprocessable.field("resource_id", "send resource_id, or pool_id to book a pool")
        resource = await bookable_resource(data.resource_id)
        if data.seats > resource["capacity"]:
            raise Unprocessable.field("seats", f"the resource has only {resource['capacity']} seats")
        return resource, await check_capacity(resource, starts_at, ends_at, data.seats)
    if data.resource_id is not None:
        raise Unprocessable.field("pool_id", "send resource_id or pool_id, not both")
    await lock_open_pool(data.pool_id)
    picked = await pick_from_pool(data.pool_id, starts_at, ends_at, data.seats, set(), now)
    if picked is None:
        raise Conflict("No resource of this pool has room for this booking.", seats_left=0)
    return picked


async def create_booking(
    user: AuthUser, data: BookingCreate, effects: Effects, remember: Remember | None = None
) -> BookingRead:
    """Create a booking on a resource, or on the resource of a pool that Bookwire picks: pending, or
    confirmed at once when the resource needs no confirmation. `remember` stores an Idempotency-Key's
    response with it."""
    customer_id = await _customer_for(user, data.customer_id)
    starts_at, ends_at = to_utc(data.starts_at, "starts_at"), to_utc(data.ends_at, "ends_at")
    _check_interval(starts_at, ends_at, datetime.now(UTC))
    async with effects.change() as change:
        # After the locks, so created_at follows commit order for one resource.
        resource, holders = await _place(data, starts_at, ends_at, datetime.now(UTC))
        now = datetime.now(UTC)
        row = {
            "id": uuid.uuid4(), "resource_id": resource["id"], "customer_id": customer_id,
            "owner_id": resource["owner_id"], "starts_at": starts_at, "ends_at": ends_at, "seats": data.seats,
            "notes": data.notes, "status": "pending" if resource["requires_confirmation"] else "confirmed",
            "price_cents": resource["price_cents"] * data.seats, "currency": resource["currency"],
            "version": 1, "created_at": now, "updated_at": now, "pool_id": data.pool_id,
        }
        await insert_rows(Booking, [row])
        await booking_history.record(row["id"], "create", user.id, None, row["status"], None, now)
        if data.pool_id is not None:
            await record_offer(row["id"], resource["id"], now)
        booking = to_booking_read(row)
        left = availability_from(resource["id"], resource["capacity"], [*holders, (starts_at, ends_at, data.seats)],
                                 starts_at, ends_at)
        await follow_up(change, effects.settings, booking, "booking.created", user.id, [(starts_at, ends_at)],
                        resource=resource, availability=left, people=_known_people(user, resource))
        if remember is not None:
            await remember(booking)
    return booking


async def get_booking(user: AuthUser, booking_id: uuid.UUID) -> BookingRead:
    return to_booking_read(await visible_booking(user, booking_id))


async def list_bookings(
    user: AuthUser, status: str | None, resource_id: uuid.UUID | None, from_: datetime | None,
    to: datetime | None, limit: int, cursor: str | None,
) -> tuple[list[BookingRead], str | None]:
    """The caller's bookings (a provider's: those on their resources; an admin's: all)."""
    conditions: list[Condition] = []
    if user.role == "customer":
        conditions.append(("customer", lambda v: Booking.customer_id == v, uuid.UUID, user.id))
    elif user.role == "provider":
        conditions.append(("owner", lambda v: Booking.owner_id == v, uuid.UUID, user.id))
    if status is not None:
        conditions.append(("status", lambda v: Booking.status == v, str, status))
    if resource_id is not None:
        conditions.append(("resource", lambda v: Booking.resource_id == v, uuid.UUID, resource_id))
    if from_ is not None:
        conditions.append(("from", lambda v: Booking.ends_at > v, datetime, to_utc(from_, "from")))
    if to is not None:
        conditions.append(("to", lambda v: Booking.starts_at < v, datetime, to_utc(to, "to")))
    rows, next_cursor = await prepared_page(Booking, conditions, limit, cursor)
    return [to_booking_read(r) for r in rows], next_cursor


async def reminders(
    user: AuthUser, booking_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[ReminderRead], str | None]:
    """One page of the reminders of a booking the caller may see, soonest due first."""
    await visible_booking(user, booking_id)
    query = Reminder.select().where(Reminder.booking_id == booking_id)
    rows, next_cursor = await keyset_page(query, Reminder, limit, cursor, order_by=Reminder.due_at)
    return [to_reminder_read(r) for r in rows], next_cursor


async def history(
    user: AuthUser, booking_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[HistoryEntry], str | None]:
    """One page of the history of a booking the caller may see, oldest first (it starts with `create`)."""
    await visible_booking(user, booking_id)
    query = BookingHistory.select().where(BookingHistory.booking_id == booking_id)
    rows, next_cursor = await keyset_page(query, BookingHistory, limit, cursor, order_by=BookingHistory.at)
    return [HistoryEntry(**{name: r[name] for name in HistoryEntry.__struct_fields__}) for r in rows], next_cursor


async def _apply(row: dict[str, Any], transition: Transition, actor_id: uuid.UUID | None, reason: str | None,
                 changes: dict[str, Any] | None = None) -> BookingRead:
    """Write one transition (inside a write transaction); 409 if someone else changed it first."""
    now = datetime.now(UTC)
    values: dict[Any, Any] = {**(changes or {}), "status": transition.target or row["status"],
              "version": row["version"] + 1, "updated_at": now}
    updated = await Booking.update(values).where(
        Booking.id == row["id"], Booking.version == row["version"]
    ).returning(Booking.id)
    if not updated:
        raise Conflict("The booking changed while this request ran; reload it and try again.")
    await booking_history.record(row["id"], transition.action, actor_id, row["status"], values["status"], reason, now)
    return to_booking_read({**row, **values})


def _refuse_status(row: dict[str, Any], action: str, rel: set[str]) -> Conflict:
    allowed = allowed_actions(row["status"], rel)
    return Conflict(
        f"Cannot {action} a booking that is {row['status']}; allowed now: {', '.join(allowed) or 'nothing'}.",
        current_status=row["status"], allowed_actions=allowed,
    )


class NotDue(Exception):
    """A response deadline that has not passed (any more): the booking moved on, or its resource's
    deadline changed, since the job was planned."""


async def _deadline_passed(row: dict[str, Any], now: datetime) -> bool:
    """Whether the response deadline of the booking's current offer has passed (a second early is
    close enough: the job runs on a whole-second schedule)."""
    resource = await Resource.select(Resource.response_deadline_seconds).where(
        Resource.id == row["resource_id"]).first()
    seconds = resource["response_deadline_seconds"] if resource else None
    if not seconds:
        return False
    asked_at = row["offered_at"] or row["created_at"]
    return bool(asked_at + timedelta(seconds=seconds) <= now + timedelta(seconds=1))


def _moved(found: dict[str, Any], row: dict[str, Any]) -> Conflict | None:
    """409 when a pooled booking moved to another resource after `found` was read (then the lock
    this request holds is the wrong resource's)."""
    if row["resource_id"] == found["resource_id"]:
        return None
    return Conflict("The booking moved to another resource while this request ran; reload it and try again.")


async def transition(
    user: AuthUser | None, booking_id: uuid.UUID, action: str, reason: str | None, effects: Effects
) -> BookingRead:
    """Take a status action (confirm, reject, cancel, check-in, complete) for the caller, or for the
    system when `user` is None (`expire` when a response deadline passes: NotDue if it has not).
    A pooled booking that is rejected or expires moves on to another resource of its pool while one
    has room (app/bookings/reassign.py): the answer is then the booking after the move."""
    found: dict[str, Any] | None
    if user is not None:
        found = await visible_booking(user, booking_id)
        rel = relations(user, found)
        if not may_take(action, rel):
            raise PermissionDenied(f"You may not {action} this booking.")
    else:
        rel = {"system"}
        found = await Booking.select(Booking.resource_id, Booking.pool_id).where(Booking.id == booking_id).first()
        if found is None:
            raise NotFound("No booking with this id.")
    transition = TRANSITIONS[action]
    actor_id = user.id if user else None
    may_move = action in MOVES_ON and found["pool_id"] is not None
    async with effects.change() as change:
        if may_move:
            await lock_row(Pool, found["pool_id"])  # a pool before any resource (app/bookings/placement.py)
        await lock_row(Resource, found["resource_id"])
        rows = await _locked_booking_row(booking_id)
        if not rows:
            raise NotFound("No booking with this id.")
        row = rows[0]
        if moved := _moved(found, row):
            raise moved
        if row["status"] not in transition.sources:
            raise _refuse_status(row, action, rel)
        if action == "expire" and not await _deadline_passed(row, datetime.now(UTC)):
            raise NotDue(str(booking_id))
        if may_move and (booking := await move_on(change, effects.settings, row, action, actor_id, reason)):
            return booking
        booking = await _apply(row, transition, actor_id, reason)
        freed = row["status"] in HOLDS_SEATS and booking.status not in HOLDS_SEATS
        windows = [(booking.starts_at, booking.ends_at)] if freed else []
        await follow_up(change, effects.settings, booking, transition.event, actor_id, windows, reason,
                        offered_at=row["offered_at"])
    return booking


async def update_booking(user: AuthUser, booking_id: uuid.UUID, data: BookingUpdate, effects: Effects) -> BookingRead:
    """Reschedule (new times, capacity re-checked) and/or change the notes."""
    reschedule = isinstance(data.starts_at, datetime) or isinstance(data.ends_at, datetime)
    if not reschedule and not isinstance(data.notes, str):
        raise Unprocessable.field("body", "send starts_at and/or ends_at to reschedule, or notes")
    action = "reschedule" if reschedule else "update"
    row = await visible_booking(user, booking_id)
    rel = relations(user, row)
    if not may_take(action, rel):
        raise PermissionDenied(f"You may not {action} this booking.")
    changes: dict[str, Any] = {}
    if isinstance(data.notes, str):
        changes["notes"] = data.notes
    async with effects.change() as change:
        await lock_row(Resource, row["resource_id"])
        fresh = await _locked_booking_row(booking_id)
        if not fresh:
            raise NotFound("No booking with this id.")
        if moved := _moved(row, fresh[0]):
            raise moved
        row = fresh[0]
        if row["status"] not in TRANSITIONS[action].sources:
            raise _refuse_status(row, action, rel)
        if reschedule:
            starts_at = row["starts_at"]
            if isinstance(data.starts_at, datetime):
                starts_at = to_utc(data.starts_at, "starts_at")
            ends_at = to_utc(data.ends_at, "ends_at") if isinstance(data.ends_at, datetime) else row["ends_at"]
            _check_interval(starts_at, ends_at, datetime.now(UTC))
            resource = await bookable_resource(row["resource_id"])
            await check_capacity(resource, starts_at, ends_at, row["seats"], ignore=row["id"])
            changes.update(starts_at=starts_at, ends_at=ends_at)
        booking = await _apply(row, TRANSITIONS[action], user.id, None, changes)
        windows = [(row["starts_at"], row["ends_at"]), (booking.starts_at, booking.ends_at)] if reschedule else []
        await follow_up(change, effects.settings, booking, TRANSITIONS[action].event, user.id, windows)
    return booking
