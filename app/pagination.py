"""Keyset pagination over `(created_at, id)` with an opaque cursor.

A cursor is the base64url of the last row's `[created_at, id]`; it is stable under inserts and
cheap on big tables. A cursor that does not decode is a 400 that says so.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

import msgspec
from litestar.params import Parameter
from piccolo.query import Select
from piccolo.table import Table

from app.db.prepared import Prepared
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


def _after(query: Select, column: Any, row_id: Any, after_time: Any, after_id: Any, newest_first: bool) -> Select:
    """`query` limited to the rows after the position `(after_time, after_id)`, in page order."""
    if newest_first:
        return query.where((column < after_time) | ((column == after_time) & (row_id < after_id)))
    return query.where((column > after_time) | ((column == after_time) & (row_id > after_id)))


def _page(rows: list[dict[str, Any]], limit: int, column: Any) -> tuple[list[dict[str, Any]], str | None]:
    """One page of `rows` (read with one row more than `limit`) and the next cursor."""
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1][column._meta.name], rows[-1]["id"])


async def keyset_page(
    query: Select, table: type[Table], limit: int, cursor: str | None, newest_first: bool = False,
    order_by: Any = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Run `query` (a select of whole rows) for one page after `cursor`; rows and the next cursor.

    Rows are ordered by `(order_by, id)`; `order_by` is a timestamp column, `created_at` by default."""
    column: Any = order_by if order_by is not None else table.created_at  # type: ignore[attr-defined]
    row_id: Any = table.id  # type: ignore[attr-defined]
    if cursor:
        query = _after(query, column, row_id, *decode_cursor(cursor), newest_first)
    rows = await query.order_by(column, row_id, ascending=not newest_first).limit(limit + 1)
    return _page(rows, limit, column)


Condition = tuple[str, Callable[[Any], Any], type, Any]
"""A filter of `prepared_page`: its name, the condition made of a value, the value's type, the value."""
_page_queries: dict[tuple[Any, ...], Prepared] = {}
MAX_PAGE_QUERIES = 512  # shapes (filters present, limit) kept per process


async def prepared_page(table: type[Table], conditions: list[Condition], limit: int,
                        cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """`keyset_page` over the rows of `table` that meet `conditions`, oldest first, as a prepared
    query (app/db/prepared.py): its SQL is built once per combination of filters and limit."""
    column: Any = table.created_at  # type: ignore[attr-defined]
    row_id: Any = table.id  # type: ignore[attr-defined]
    values = [value for *_, value in conditions]
    if cursor:
        values += decode_cursor(cursor)
    shape = (table, tuple(name for name, *_ in conditions), bool(cursor), limit)
    prepared = _page_queries.get(shape)
    if prepared is None:
        makers = [make for _, make, _, _ in conditions]

        def build(*params: Any) -> Select:
            query = table.select()
            for make, param in zip(makers, params, strict=False):
                query = query.where(make(param))
            if cursor:
                query = _after(query, column, row_id, params[-2], params[-1], False)
            return query.order_by(column, row_id).limit(limit + 1)

        kinds = [kind for _, _, kind, _ in conditions] + ([datetime, uuid.UUID] if cursor else [])
        if len(_page_queries) >= MAX_PAGE_QUERIES:
            _page_queries.clear()
        prepared = _page_queries[shape] = Prepared(table, build, *kinds)
    return _page(await prepared(*values), limit, column)
