"""Piccolo queries built once and run many times with other values.

Piccolo builds a query's SQL anew on every run, walking columns, joins and conditions: for the
resource a booking locks (a join and five conditions) that took more CPU than PostgreSQL took to run
it. `Prepared` builds the query once per process, with a placeholder value of the declared type
for each parameter, keeps the flattened SQL template (Piccolo's own `{}` form), and then runs it as
`Table.raw(template, *values)` — the same SQL, the same engine path (the current transaction's
connection), the same result processing as the query itself.

It reads Piccolo's `QueryString.bundle` (public, undocumented): piccolo is pinned to a minor
version for it, and tests/unit/test_prepared.py fails loudly when the SQL or the results differ
from Piccolo's own.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from piccolo import columns
from piccolo.query.base import Query
from piccolo.table import Table

_counter = itertools.count(1)


def _placeholder(kind: type) -> Any:
    """A value of `kind` that no constant of a query could be equal to."""
    n = next(_counter)
    if kind is uuid.UUID:
        return uuid.uuid4()
    if kind is datetime:
        return datetime(1901, 1, 1, tzinfo=UTC) + timedelta(microseconds=n * 7919 + 104729)
    if kind is int:
        return -(10**15) - n
    if kind is str:
        return f"\x00placeholder-{uuid.uuid4()}"
    raise TypeError(f"no placeholder for parameters of type {kind.__name__}")


class Prepared:
    """`build(*params)` returns a Piccolo query (one statement) whose values include the params;
    calling the Prepared runs that query's SQL with new params and returns the rows as dicts (what
    the query returns without `.output(...)` options; `.first()` still returns a list)."""

    def __init__(self, table: type[Table], build: Callable[..., Any], *kinds: type) -> None:
        self.table = table
        self.build = build
        self.kinds = kinds
        self._compiled: dict[int, tuple[str, list[tuple[bool, Any]]]] = {}  # per engine (its id)

    def compile(self) -> tuple[str, list[tuple[bool, Any]]]:
        """The flat `{}` template and, per placeholder of it, (True, parameter index) or
        (False, constant)."""
        placeholders = [_placeholder(kind) for kind in self.kinds]
        querystrings = self.build(*placeholders).querystrings
        if len(querystrings) != 1:
            raise ValueError(f"a prepared query must be one statement, not {len(querystrings)}")
        _, fragments, values = querystrings[0].bundle(start_index=1, bundled=[], combined_args=[])
        template = "".join(f.prefix.replace("{", "{{").replace("}", "}}") + ("" if f.no_arg else "{}")
                           for f in fragments)
        slots: list[tuple[bool, Any]] = []
        found: set[int] = set()
        for value in values:
            index = next((i for i, p in enumerate(placeholders) if value is p or value == p), None)
            slots.append((index is not None, value if index is None else index))
            if index is not None:
                found.add(index)
        if found != set(range(len(placeholders))):
            raise ValueError(f"parameters {sorted(set(range(len(placeholders))) - found)} do not reach the SQL as"
                             f" given (Piccolo converted them?): {template}")
        return template, slots

    async def __call__(self, *params: Any) -> list[dict[str, Any]]:
        engine = id(self.table._meta.db)  # the SQL may differ per engine (FOR UPDATE on PostgreSQL only)
        compiled = self._compiled.get(engine)
        if compiled is None:
            compiled = self._compiled[engine] = self.compile()
        template, slots = compiled
        args = [params[v] if is_param else v for is_param, v in slots]
        rows: list[dict[str, Any]] = await self.table.raw(template, *args)
        return rows

    def sql(self) -> str:
        """The template, for tests and logs."""
        return self.compile()[0]



_KINDS: dict[type, type] = {
    columns.UUID: uuid.UUID, columns.ForeignKey: uuid.UUID, columns.Timestamptz: datetime,
    columns.Integer: int, columns.BigInt: int, columns.SmallInt: int,
    columns.Varchar: str, columns.Text: str, columns.JSON: str, columns.JSONB: str,
}
MAX_PREPARED_ROWS = 16
"""Inserts of more rows than this are built by Piccolo each time (they are rare: a reminder burst)."""
_inserts: dict[tuple[type[Table], tuple[str, ...], int], Prepared] = {}


async def insert_rows(table: type[Table], rows: list[dict[str, Any]]) -> None:
    """INSERT `rows` (dicts with the same keys, column names) as one statement whose SQL is built
    once per table, key set and row count. JSON columns take any JSON value (encoded here)."""
    if not rows:
        return
    keys = tuple(rows[0])
    column_types = [type(table._meta.get_column_by_name(key)) for key in keys]
    if (len(rows) > MAX_PREPARED_ROWS or any(kind not in _KINDS for kind in column_types)
            or any(tuple(row) != keys for row in rows)):
        await table.insert(*(table(**row) for row in rows))
        return
    prepared = _inserts.get((table, keys, len(rows)))
    if prepared is None:
        width = len(keys)

        def build(*values: Any) -> Query[Any, Any]:
            return table.insert(*(table(**dict(zip(keys, values[i * width:(i + 1) * width], strict=True)))
                                  for i in range(len(rows))))

        kinds = [_KINDS[kind] for kind in column_types] * len(rows)
        prepared = _inserts[(table, keys, len(rows))] = Prepared(table, build, *kinds)
    json_keys = {key for key, kind in zip(keys, column_types, strict=True) if kind in (columns.JSON, columns.JSONB)}
    await prepared(*(msgspec.json.encode(row[key]).decode() if key in json_keys and not isinstance(row[key], str)
                     else row[key] for row in rows for key in keys))
