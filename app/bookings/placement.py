"""Where a booking lands: the resource it names, locked and checked for room, or — for a pooled
request — the resource of the pool with room that was offered a request least recently.

Locks, on PostgreSQL (SQLite holds the whole file): a pooled request takes its pool's row first and
then the resource it picks, so two requests to one pool queue up and see each other's seats; a
booking moving on (app/bookings/reassign.py) takes the pool, its resource, the booking, then the
next resource. Whoever locks a pool does so before any resource, so these orders cannot deadlock.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from app.db.prepared import Prepared
from app.db.tables import Resource
from app.db.transactions import for_update
from app.errors import Conflict, Unprocessable
from app.resources.capacity import Interval, peak_seats
from app.resources.seats import seat_holders, seat_holders_by_resource


def _select_bookable_resource(resource_id: uuid.UUID) -> Any:
    owner: Any = Resource.owner_id  # the joined owner's columns
    return for_update(Resource.select(
        *Resource.all_columns(), owner.name.as_alias("owner_name"), owner.email.as_alias("owner_email"),
    ).where(
        Resource.id == resource_id, Resource.offered()  # a deactivated provider takes no bookings
    ), Resource).first()


_bookable_resource_rows = Prepared(Resource, _select_bookable_resource, uuid.UUID)


async def bookable_resource(resource_id: uuid.UUID) -> dict[str, Any]:
    """The resource row (with `owner_name`, `owner_email`) if it may take bookings now, else 422
    (the same answer whatever the reason); inside a write transaction, also locked until commit."""
    rows = await _bookable_resource_rows(resource_id)
    if not rows:
        raise Unprocessable.field("resource_id", "no active resource has this id")
    return rows[0]


async def check_capacity(
    resource: dict[str, Any], starts_at: datetime, ends_at: datetime, seats: int,
    ignore: uuid.UUID | None = None,
) -> list[Interval]:
    """409 when `seats` more would exceed capacity at some instant; else the other seat holders of
    the interval. Call under the resource lock."""
    holders = await seat_holders(resource["id"], starts_at, ends_at, ignore)
    taken = peak_seats(holders, starts_at, ends_at)
    if taken + seats > resource["capacity"]:
        raise Conflict(
            f"Only {resource['capacity'] - taken} of {resource['capacity']} seats are free in this interval.",
            seats_left=resource["capacity"] - taken,
        )
    return holders


async def pick_from_pool(
    pool_id: uuid.UUID, starts_at: datetime, ends_at: datetime, seats: int, exclude: set[uuid.UUID],
    now: datetime,
) -> tuple[dict[str, Any], list[Interval]] | None:
    """Under the pool's lock: the pool's offered resource (not in `exclude`) with room for `seats`
    over the interval that was offered a request least recently (never offered first), locked, and
    its other seat holders; its `last_offered_at` becomes `now`. None when none has room."""
    candidates = [r for r in await Resource.select(Resource.id, Resource.capacity, Resource.last_offered_at).where(
        Resource.pool_id == pool_id, Resource.offered(), Resource.capacity >= seats) if r["id"] not in exclude]
    if not candidates:
        return None
    taken = await seat_holders_by_resource([r["id"] for r in candidates], starts_at, ends_at)
    candidates.sort(key=lambda r: (r["last_offered_at"] is not None, r["last_offered_at"] or now, str(r["id"])))
    for candidate in candidates:
        if peak_seats(taken[candidate["id"]], starts_at, ends_at) + seats > candidate["capacity"]:
            continue
        # Read without its lock: a direct booking may have taken the room since. Lock, then look again.
        rows = await _bookable_resource_rows(candidate["id"])
        if not rows:
            continue
        holders = await seat_holders(candidate["id"], starts_at, ends_at)
        if peak_seats(holders, starts_at, ends_at) + seats <= rows[0]["capacity"]:
            await Resource.update({Resource.last_offered_at: now}).where(Resource.id == candidate["id"])
            return rows[0], holders
    return None
