"""Wire types of the resources area."""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec

from app.wire import Capacity, Currency, DeadlineSeconds, FreeText, Name, PriceCents, ShortText


class ResourceCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    kind: ShortText = "room"
    description: FreeText = ""
    capacity: Capacity = 1
    price_cents: PriceCents = 0
    currency: Currency = "EUR"
    timezone: ShortText = "UTC"
    requires_confirmation: bool = True
    response_deadline_seconds: DeadlineSeconds | None = None
    owner_id: uuid.UUID | None = None
    """Admins only: the provider who owns the resource (default: the caller)."""
    active: bool = True
    pool_id: uuid.UUID | None = None
    """An active pool the resource joins (see app/pools/)."""


class ResourceUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """A partial update: fields left out stay as they are."""

    name: Name | msgspec.UnsetType = msgspec.UNSET
    kind: ShortText | msgspec.UnsetType = msgspec.UNSET
    description: FreeText | msgspec.UnsetType = msgspec.UNSET
    capacity: Capacity | msgspec.UnsetType = msgspec.UNSET
    price_cents: PriceCents | msgspec.UnsetType = msgspec.UNSET
    currency: Currency | msgspec.UnsetType = msgspec.UNSET
    timezone: ShortText | msgspec.UnsetType = msgspec.UNSET
    requires_confirmation: bool | msgspec.UnsetType = msgspec.UNSET
    response_deadline_seconds: DeadlineSeconds | msgspec.UnsetType | None = msgspec.UNSET
    active: bool | msgspec.UnsetType = msgspec.UNSET
    pool_id: uuid.UUID | msgspec.UnsetType | None = msgspec.UNSET
    """An active pool to join, or null to leave the pool."""


class ResourceRead(msgspec.Struct):
    id: uuid.UUID
    owner_id: uuid.UUID
    name: str
    kind: str
    description: str
    capacity: int
    price_cents: int
    currency: str
    timezone: str
    requires_confirmation: bool
    response_deadline_seconds: int | None
    active: bool
    created_at: datetime
    updated_at: datetime
    pool_id: uuid.UUID | None = None


class BusyInterval(msgspec.Struct):
    starts_at: datetime
    ends_at: datetime
    seats_taken: int
    seats_left: int


class Availability(msgspec.Struct):
    resource_id: uuid.UUID
    capacity: int
    from_: datetime = msgspec.field(name="from")
    to: datetime
    busy: list[BusyInterval]
