"""Seats on a resource: the bookings holding them over a window, and the availability they leave."""

from __future__ import annotations

import uuid
from datetime import datetime

from app.db.prepared import Prepared
from app.db.tables import Booking, Resource
from app.resources.capacity import HOLDS_SEATS, Interval, occupancy
from app.resources.schemas import Availability, BusyInterval

_holding_seats = Prepared(Booking, lambda resource_id, start, end: Booking.select(
    Booking.id, Booking.starts_at, Booking.ends_at, Booking.seats,
).where(
    Booking.resource_id == resource_id, Booking.status.is_in(sorted(HOLDS_SEATS)),
    Booking.starts_at < end, Booking.ends_at > start,
), uuid.UUID, datetime, datetime)


async def seat_holders(
    resource_id: uuid.UUID, start: datetime, end: datetime, ignore: uuid.UUID | None = None
) -> list[Interval]:
    """`(starts_at, ends_at, seats)` of the bookings that hold seats and overlap `[start, end)`."""
    rows = await _holding_seats(resource_id, start, end)
    return [(r["starts_at"], r["ends_at"], r["seats"]) for r in rows if r["id"] != ignore]


async def seat_holders_by_resource(
    resource_ids: list[uuid.UUID], start: datetime, end: datetime
) -> dict[uuid.UUID, list[Interval]]:
    """`seat_holders` of several resources in one read (a pool's): each id, with its holders."""
    holders: dict[uuid.UUID, list[Interval]] = {resource_id: [] for resource_id in resource_ids}
    if resource_ids:
        for row in await Booking.select(Booking.resource_id, Booking.starts_at, Booking.ends_at, Booking.seats).where(
            Booking.resource_id.is_in(resource_ids), Booking.status.is_in(sorted(HOLDS_SEATS)),
            Booking.starts_at < end, Booking.ends_at > start,
        ):
            holders[row["resource_id"]].append((row["starts_at"], row["ends_at"], row["seats"]))
    return holders


def availability_from(
    resource_id: uuid.UUID, capacity: int, holders: list[Interval], start: datetime, end: datetime
) -> Availability:
    """The availability over `[start, end)` that `holders` (all seat holders overlapping it) leave."""
    busy = [
        BusyInterval(starts_at=s, ends_at=e, seats_taken=n, seats_left=max(capacity - n, 0))
        for s, e, n in occupancy(holders, start, end)
    ]
    return Availability(resource_id=resource_id, capacity=capacity, from_=start, to=end, busy=busy)


async def availability_of(resource_id: uuid.UUID, start: datetime, end: datetime) -> Availability:
    """Maximal intervals of `[start, end)` with a constant, non-zero number of seats taken."""
    resource = await Resource.select(Resource.capacity).where(Resource.id == resource_id).first()
    capacity = resource["capacity"] if resource else 0
    return availability_from(resource_id, capacity, await seat_holders(resource_id, start, end), start, end)
