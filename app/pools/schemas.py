"""Wire types of the pools area."""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec

from app.resources.schemas import BusyInterval
from app.wire import FreeText, Name


class PoolCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    description: FreeText = ""
    active: bool = True


class PoolUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """A partial update: fields left out stay as they are."""

    name: Name | msgspec.UnsetType = msgspec.UNSET
    description: FreeText | msgspec.UnsetType = msgspec.UNSET
    active: bool | msgspec.UnsetType = msgspec.UNSET


class PoolRead(msgspec.Struct):
    id: uuid.UUID
    name: str
    description: str
    active: bool
    created_at: datetime
    updated_at: datetime


class PoolAvailability(msgspec.Struct):
    """A resource's availability summed over the pool's offered resources."""

    pool_id: uuid.UUID
    capacity: int
    from_: datetime = msgspec.field(name="from")
    to: datetime
    busy: list[BusyInterval]
