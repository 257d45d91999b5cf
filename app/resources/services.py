"""Resource rules: who may see and change a resource, what a change may not break, and its availability."""

from __future__ import annotations

import uuid
import zoneinfo
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import msgspec

from app.db.tables import Pool, Resource, User
from app.db.transactions import lock_row
from app.effects import Effects
from app.errors import Conflict, NotFound, PermissionDenied, Unprocessable
from app.idempotency import Remember
from app.pagination import keyset_page
from app.resources.capacity import peak_seats
from app.resources.events import change_types, resource_changed
from app.resources.schemas import Availability, ResourceCreate, ResourceRead, ResourceUpdate
from app.resources.seats import availability_of, seat_holders
from app.security import AuthUser
from app.validation import to_utc

MAX_AVAILABILITY_WINDOW = timedelta(days=93)


@cache
def _timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def check_timezone(name: str) -> None:
    """422 unless `name` is an IANA time zone such as `Europe/Paris`."""
    if name not in _timezones():
        raise Unprocessable.field("timezone", "must be an IANA time zone name such as Europe/Paris or UTC")


def to_resource_read(row: dict[str, Any]) -> ResourceRead:
    return ResourceRead(**{name: row[name] for name in ResourceRead.__struct_fields__})


def can_manage(user: AuthUser, row: dict[str, Any]) -> bool:
    """Owners manage their own resources, admins every resource."""
    return user.is_admin or row["owner_id"] == user.id


async def load_visible(user: AuthUser, resource_id: uuid.UUID) -> dict[str, Any]:
    """The resource row, or 404 when it is deleted, or not offered (inactive, or its owner
    deactivated) and not the caller's to manage."""
    owner_active: Any = Resource.owner_id.active
    row = await Resource.select(*Resource.all_columns(), owner_active.as_alias("owner_active")).where(
        Resource.id == resource_id, Resource.deleted_at.is_null()
    ).first()
    if row is None:
        raise NotFound("No resource with this id.")
    offered = row.pop("owner_active") and row["active"]
    if not offered and not can_manage(user, row):
        raise NotFound("No resource with this id.")
    return row


async def _load_managed(user: AuthUser, resource_id: uuid.UUID) -> dict[str, Any]:
    row = await load_visible(user, resource_id)
    if not can_manage(user, row):
        raise PermissionDenied("Only the resource's owner or an admin may change it.")
    return row


async def _owner_for(user: AuthUser, owner_id: uuid.UUID | None) -> uuid.UUID:
    if user.role == "customer":
        raise PermissionDenied("Only providers and admins may create resources.")
    if owner_id is None or owner_id == user.id:
        return user.id
    if not user.is_admin:
        raise PermissionDenied("Only admins may create a resource for another owner.")
    owner = await User.select(User.role, User.active).where(User.id == owner_id).first()
    if owner is None or owner["role"] not in ("provider", "admin") or not owner["active"]:
        raise Unprocessable.field("owner_id", "must be the id of an active provider")
    return owner_id


async def lock_open_pool(pool_id: uuid.UUID) -> None:
    """Inside a write transaction, before any resource's lock: hold the pool until commit; 422
    unless it is active (only an active pool takes new members and new requests; a pool is deleted
    only once it is empty, under this same lock)."""
    await lock_row(Pool, pool_id)
    if not await Pool.exists().where(Pool.id == pool_id, Pool.active == True):  # noqa: E712
        raise Unprocessable.field("pool_id", "no active pool has this id")


async def create_resource(
    user: AuthUser, data: ResourceCreate, effects: Effects, remember: Remember | None = None
) -> ResourceRead:
    """Create a resource (`remember` stores an Idempotency-Key's response with it)."""
    owner_id = await _owner_for(user, data.owner_id)
    check_timezone(data.timezone)
    now = datetime.now(UTC)
    row = {**msgspec.structs.asdict(data), "id": uuid.uuid4(), "owner_id": owner_id,
           "created_at": now, "updated_at": now, "deleted_at": None}
    resource = to_resource_read(row)
    async with effects.change() as change:
        if data.pool_id is not None:
            await lock_open_pool(data.pool_id)
        await Resource.insert(Resource(**row))
        resource_changed(change, resource, ["resource.created"], was_active=False)
        if remember is not None:
            await remember(resource)
    return resource


async def get_resource(user: AuthUser, resource_id: uuid.UUID) -> ResourceRead:
    return to_resource_read(await load_visible(user, resource_id))


async def list_resources(
    user: AuthUser, owner_id: uuid.UUID | None, kind: str | None, limit: int, cursor: str | None
) -> tuple[list[ResourceRead], str | None]:
    """Offered resources for everyone; a provider also sees their inactive ones, an admin all."""
    query = Resource.select(*Resource.all_columns()).where(Resource.deleted_at.is_null())
    if not user.is_admin:
        query = query.where(Resource.offered() | (Resource.owner_id == user.id))
    if owner_id is not None:
        query = query.where(Resource.owner_id == owner_id)
    if kind is not None:
        query = query.where(Resource.kind == kind)
    rows, next_cursor = await keyset_page(query, Resource, limit, cursor)
    return [to_resource_read(r) for r in rows], next_cursor


_FAR_FUTURE = datetime(9000, 1, 1, tzinfo=UTC)


async def update_resource(
    user: AuthUser, resource_id: uuid.UUID, data: ResourceUpdate, effects: Effects
) -> ResourceRead:
    """Apply a partial update; lowering capacity below seats already booked is 409."""
    await _load_managed(user, resource_id)
    changes: dict[Any, Any] = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET}
    if not changes:
        raise Unprocessable.field("body", "send at least one field to change")
    if "timezone" in changes:
        check_timezone(changes["timezone"])
    async with effects.change() as change:
        if changes.get("pool_id") is not None:
            await lock_open_pool(changes["pool_id"])  # pool before resource, as a pooled booking locks them
        await lock_row(Resource, resource_id)
        row = await _load_managed(user, resource_id)
        now = datetime.now(UTC)
        if "capacity" in changes and changes["capacity"] < row["capacity"]:
            taken = peak_seats(await seat_holders(resource_id, now, _FAR_FUTURE), now, _FAR_FUTURE)
            if taken > changes["capacity"]:
                raise Conflict(f"Future bookings hold up to {taken} seats at once; capacity cannot go below that.")
        changes["updated_at"] = now
        await Resource.update(changes).where(Resource.id == resource_id)
        resource = to_resource_read({**row, **changes})
        changed = {k for k, v in changes.items() if row.get(k) != v}
        resource_changed(change, resource, change_types(changed), was_active=row["active"])
    return resource


async def delete_resource(user: AuthUser, resource_id: uuid.UUID, effects: Effects) -> None:
    """Soft-delete (history keeps pointing at it); 409 while active future bookings exist."""
    await _load_managed(user, resource_id)
    async with effects.change() as change:
        await lock_row(Resource, resource_id)
        now = datetime.now(UTC)
        if await seat_holders(resource_id, now, _FAR_FUTURE):
            raise Conflict("The resource has active future bookings; cancel them first.")
        row = await _load_managed(user, resource_id)
        await Resource.update({Resource.deleted_at: now, Resource.active: False, Resource.updated_at: now}).where(
            Resource.id == resource_id
        )
        resource = to_resource_read({**row, "active": False, "updated_at": now})
        resource_changed(change, resource, ["resource.deleted"], was_active=row["active"])


def availability_window(from_: datetime, to: datetime) -> tuple[datetime, datetime]:
    """`[from, to)` of an availability query in UTC; 422 unless `to` is after `from` and the window
    spans at most 93 days (for a resource, or a pool)."""
    start, end = to_utc(from_, "from"), to_utc(to, "to")
    if end <= start:
        raise Unprocessable.field("to", "must be after from")
    if end - start > MAX_AVAILABILITY_WINDOW:
        raise Unprocessable.field("to", "the window may span at most 93 days")
    return start, end


async def availability(user: AuthUser, resource_id: uuid.UUID, from_: datetime, to: datetime) -> Availability:
    """Seats taken over `[from, to)` as maximal intervals with a constant count."""
    start, end = availability_window(from_, to)
    await load_visible(user, resource_id)
    return await availability_of(resource_id, start, end)
