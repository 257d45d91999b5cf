"""Keyset pagination over `(created_at, id)` with an opaque cursor.

A cursor is the base64url of the last row's `[created_at, id]`; it is stable under inserts and
cheap on big tables. A cursor that does not decode is a 400 that says so.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

import msgspec
from litestar.params import Parameter
from piccolo.query import Select
from piccolo.table import Table

from app.errors import BadRequest

T = TypeVar("T")
DEFAULT_LIMIT = 50
MAX_LIMIT = 200

Limit = Annotated[int, Parameter(ge=1, le=MAX_LIMIT, description="Items per page")]
"""The `limit` query parameter of every list endpoint."""


class Page(msgspec.Struct, Generic[T]):
    """One page of a list; `next_cursor` is null on the last page."""

    items: list[T]
    next_cursor: str | None


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = msgspec.json.encode([created_at.isoformat(), str(row_id)])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The position a cursor names, or 400."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, row_id = msgspec.json.decode(raw, type=tuple[str, str])
        position = datetime.fromisoformat(created_at), uuid.UUID(row_id)
    except (binascii.Error, msgspec.DecodeError, ValueError, TypeError):
        raise BadRequest("The cursor is not one this API returned; start again without `cursor`.",
                         errors=[{"field": "cursor", "message": "unreadable cursor"}]) from None
    if position[0].tzinfo is None:
        raise BadRequest("The cursor is not one this API returned; start again without `cursor`.")
    return position


async def keyset_page(
    query: Select, table: type[Table], limit: int, cursor: str | None, newest_first: bool = False
) -> tuple[list[dict[str, Any]], str | None]:
    """Run `query` (a select of whole rows) for one page after `cursor`; rows and the next cursor."""
    created_at: Any = table.created_at  # type: ignore[attr-defined]
    row_id: Any = table.id  # type: ignore[attr-defined]
    if cursor:
        after_time, after_id = decode_cursor(cursor)
        if newest_first:
            query = query.where((created_at < after_time) | ((created_at == after_time) & (row_id < after_id)))
        else:
            query = query.where((created_at > after_time) | ((created_at == after_time) & (row_id > after_id)))
    rows = await query.order_by(created_at, row_id, ascending=not newest_first).limit(limit + 1)
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1]["created_at"], rows[-1]["id"])
