"""Pool rules: admins manage pools, everyone signed in reads the active ones and what seats they
have free. Which resource a pooled request lands on is app/bookings/placement.py's business."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec

from app.db.tables import Pool, Resource
from app.db.transactions import lock_row, write_transaction
from app.errors import Conflict, NotFound, PermissionDenied, Unprocessable
from app.pagination import keyset_page
from app.pools.schemas import PoolAvailability, PoolCreate, PoolRead, PoolUpdate
from app.resources.capacity import occupancy
from app.resources.schemas import BusyInterval
from app.resources.seats import seat_holders_by_resource
from app.resources.services import availability_window
from app.security import AuthUser


def to_pool_read(row: dict[str, Any]) -> PoolRead:
    return PoolRead(**{name: row[name] for name in PoolRead.__struct_fields__})


def _admin(user: AuthUser) -> None:
    if not user.is_admin:
        raise PermissionDenied("Only admins manage pools.")


async def _visible(user: AuthUser, pool_id: uuid.UUID) -> dict[str, Any]:
    """The pool's row; 404 when it does not exist, or is inactive and the caller no admin."""
    row = await Pool.select().where(Pool.id == pool_id).first()
    if row is None or not (row["active"] or user.is_admin):
        raise NotFound("No pool with this id.")
    return row


async def create_pool(user: AuthUser, data: PoolCreate) -> PoolRead:
    _admin(user)
    now = datetime.now(UTC)
    row = {**msgspec.structs.asdict(data), "id": uuid.uuid4(), "created_at": now, "updated_at": now}
    await Pool.insert(Pool(**row))
    return to_pool_read(row)


async def list_pools(user: AuthUser, limit: int, cursor: str | None) -> tuple[list[PoolRead], str | None]:
    """Active pools, oldest first; admins see inactive ones too."""
    query = Pool.select() if user.is_admin else Pool.select().where(Pool.active == True)  # noqa: E712
    rows, next_cursor = await keyset_page(query, Pool, limit, cursor)
    return [to_pool_read(r) for r in rows], next_cursor


async def get_pool(user: AuthUser, pool_id: uuid.UUID) -> PoolRead:
    return to_pool_read(await _visible(user, pool_id))


async def update_pool(user: AuthUser, pool_id: uuid.UUID, data: PoolUpdate) -> PoolRead:
    """Rename, describe, (de)activate. An inactive pool takes no new requests; those already in it
    still move on through its resources."""
    _admin(user)
    changes: dict[Any, Any] = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET}
    if not changes:
        raise Unprocessable.field("body", "send at least one field to change")
    async with write_transaction():
        row = await _visible(user, pool_id)
        changes["updated_at"] = datetime.now(UTC)
        await Pool.update(changes).where(Pool.id == pool_id)
    return to_pool_read({**row, **changes})


async def delete_pool(user: AuthUser, pool_id: uuid.UUID) -> None:
    """Delete an empty pool; 409 while resources are still in it (their owners or an admin take them
    out first). Bookings made through it keep its id."""
    _admin(user)
    async with write_transaction():
        await lock_row(Pool, pool_id)  # a resource joining it meanwhile waits, then finds it gone
        await _visible(user, pool_id)
        if await Resource.exists().where(Resource.pool_id == pool_id, Resource.deleted_at.is_null()):
            raise Conflict("Resources are still in this pool; take them out first.")
        await Pool.delete().where(Pool.id == pool_id)


async def availability(user: AuthUser, pool_id: uuid.UUID, from_: datetime, to: datetime) -> PoolAvailability:
    """Seats taken over `[from, to)`, summed over the pool's offered resources, as maximal intervals
    with a constant count (`seats_left` is what the pool as a whole has free: a request for several
    seats needs them on one resource)."""
    start, end = availability_window(from_, to)
    await _visible(user, pool_id)
    members = await Resource.select(Resource.id, Resource.capacity).where(
        Resource.pool_id == pool_id, Resource.offered())
    capacity = sum(r["capacity"] for r in members)
    holders = await seat_holders_by_resource([r["id"] for r in members], start, end)
    busy = [BusyInterval(starts_at=s, ends_at=e, seats_taken=n, seats_left=max(capacity - n, 0))
            for s, e, n in occupancy([h for each in holders.values() for h in each], start, end)]
    return PoolAvailability(pool_id=pool_id, capacity=capacity, from_=start, to=end, busy=busy)
