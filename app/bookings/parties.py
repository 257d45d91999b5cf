"""Who and what a booking is about: its resource and its two people, fetched once per change and
shared by its notifications and its emails."""

from __future__ import annotations

import uuid
from typing import Any

from app.bookings.schemas import BookingRead
from app.db.prepared import Prepared
from app.db.tables import Resource, User

Parties = tuple[dict[str, Any], dict[str, dict[str, Any]]]
"""The resource row (`id`, `name`, `timezone`) and `{"customer"|"owner": user row}` (`id`, `name`,
`email`, `active`)."""


_resource_row = Prepared(Resource, lambda resource_id: Resource.select(
    Resource.id, Resource.name, Resource.timezone).where(Resource.id == resource_id), uuid.UUID)
_two_users = Prepared(User, lambda a, b: User.select(User.id, User.name, User.email, User.active).where(
    (User.id == a) | (User.id == b)), uuid.UUID, uuid.UUID)


async def booking_parties(booking: BookingRead, resource: dict[str, Any] | None = None) -> Parties:
    """The resource (unless the caller has its row already) and the customer and owner of one booking."""
    if resource is None:
        (resource,) = await _resource_row(booking.resource_id)
    users = {u["id"]: u for u in await _two_users(booking.customer_id, booking.owner_id)}
    return resource, _people(booking, users)


async def parties_of(bookings: list[BookingRead]) -> dict[uuid.UUID, Parties]:
    """`booking_parties` for many bookings in two queries."""
    resources = {r["id"]: r for r in await Resource.select(Resource.id, Resource.name, Resource.timezone).where(
        Resource.id.is_in(list({b.resource_id for b in bookings})))}
    users = await _users(bookings)
    return {b.id: (resources[b.resource_id], _people(b, users)) for b in bookings}


async def _users(bookings: list[BookingRead]) -> dict[uuid.UUID, dict[str, Any]]:
    return {u["id"]: u for u in await User.select(User.id, User.name, User.email, User.active).where(
        User.id.is_in(list({u for b in bookings for u in (b.customer_id, b.owner_id)})))}


def _people(booking: BookingRead, users: dict[uuid.UUID, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {"customer": users[booking.customer_id], "owner": users[booking.owner_id]}
