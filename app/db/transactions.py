"""Write transactions that serialise the writers which must see each other's seats.

SQLite: `BEGIN IMMEDIATE` takes the write lock up front (a deferred transaction that reads and
then writes fails with SQLITE_BUSY instead of waiting), after this process's writers have queued
on the engine's `write_lock`. PostgreSQL: an ordinary transaction plus a
row lock (`SELECT ... FOR UPDATE`) on the resource or booking, so only writers of one row queue up.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from piccolo.engine.postgres import PostgresEngine
from piccolo.engine.sqlite import TransactionType
from piccolo.query.methods.select import Select
from piccolo.table import Table

from app.db.engine import LocalSQLiteEngine
from app.db.tables import Resource


@asynccontextmanager
async def write_transaction() -> AsyncIterator[None]:
    """A transaction in which reads are followed by dependent writes."""
    engine = Resource._meta.db
    if isinstance(engine, LocalSQLiteEngine):
        async with engine.write_lock, engine.transaction(transaction_type=TransactionType.immediate):
            yield
    else:
        async with engine.transaction():
            yield


def for_update(query: Select, table: type[Table]) -> Select:
    """Inside `write_transaction`: `query` also locks the rows of `table` it reads until commit (on
    PostgreSQL; SQLite already holds the whole file) — a lock and a read in one round trip."""
    return query.lock_rows("UPDATE", of=(table,)) if isinstance(table._meta.db, PostgresEngine) else query


async def lock_row(table: type[Table], row_id: uuid.UUID) -> None:
    """Inside `write_transaction`: hold this row until commit (SQLite already holds the whole file)."""
    if isinstance(table._meta.db, PostgresEngine):
        await table.raw(f"SELECT id FROM {table._meta.tablename} WHERE id = {{}} FOR UPDATE", row_id)  # noqa: S608
