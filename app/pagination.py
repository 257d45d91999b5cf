"""Keyset pagination over `(created_at, id)` with an opaque cursor.

A cursor is the base64url of the last row's `[created_at, id]`; it is stable under inserts and
cheap on big tables. A cursor that does not decode is a 400 that says so.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime
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


MAX_CURSOR_LENGTH = 200
"""Longer than any cursor this API returns (about 100 characters): refused before decoding."""

_UNREADABLE = "The cursor is not one this API returned; start again without `cursor`."


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The position a cursor names (its time in UTC), or 400."""
    try:
        if len(cursor) > MAX_CURSOR_LENGTH:
            raise ValueError(cursor)
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, row_id = msgspec.json.decode(raw, type=tuple[str, str])
        at = datetime.fromisoformat(created_at)
        if at.tzinfo is None:
            raise ValueError(created_at)
        # In UTC here, so that a time at the calendar's edge (year 9999 at -14:00) fails now as an
        # unreadable cursor rather than later in the database driver as a 500.
        return at.astimezone(UTC), uuid.UUID(row_id)
    except (binascii.Error, msgspec.DecodeError, ValueError, TypeError, OverflowError):
        raise BadRequest(_UNREADABLE, errors=[{"field": "cursor", "message": "unreadable cursor"}]) from None


async def keyset_page(
    query: Select, table: type[Table], limit: int, cursor: str | None, newest_first: bool = False,
    order_by: Any = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Run `query` (a select of whole rows) for one page after `cursor`; rows and the next cursor.

    Rows are ordered by `(order_by, id)`; `order_by` is a timestamp column, `created_at` by default."""
    column: Any = order_by if order_by is not None else table.created_at  # type: ignore[attr-defined]
    row_id: Any = table.id  # type: ignore[attr-defined]
    if cursor:
        after_time, after_id = decode_cursor(cursor)
        if newest_first:
            query = query.where((column < after_time) | ((column == after_time) & (row_id < after_id)))
        else:
            query = query.where((column > after_time) | ((column == after_time) & (row_id > after_id)))
    rows = await query.order_by(column, row_id, ascending=not newest_first).limit(limit + 1)
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1][column._meta.name], rows[-1]["id"])
