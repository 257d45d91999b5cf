"""The SQLite engine's kept connections (app/db/engine.py), and the Piccolo and aiosqlite internals
it relies on: when an upgrade moves them, these fail before anything subtler does."""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
from pathlib import Path

import aiosqlite
import pytest
from piccolo.engine.sqlite import SQLiteEngine, SQLiteTransaction, TransactionType

from app.db.engine import IDLE_SQLITE_CONNECTIONS, LocalSQLiteEngine, close_engine, open_engine


def test_piccolo_and_aiosqlite_internals_are_where_the_engine_expects_them() -> None:
    params = list(inspect.signature(SQLiteEngine._run_in_new_connection).parameters)
    assert params == ["self", "query", "args", "query_type", "table"], params
    params = list(inspect.signature(SQLiteEngine._run_in_existing_connection).parameters)
    assert params == ["self", "connection", "query", "args", "query_type", "table"], params
    assert sqlite3.sqlite_version_info >= (3, 35)  # RETURNING: the overrides drop Piccolo's fallback
    assert {"_parent", "_committed", "_rolled_back", "context", "connection"} <= set(SQLiteTransaction.__slots__)
    exit_source = inspect.getsource(SQLiteTransaction.__aexit__)
    assert "self.connection.close()" in exit_source and "current_transaction.reset(self.context)" in exit_source
    assert "self.engine.get_connection()" in inspect.getsource(SQLiteTransaction.get_connection)
    pending = aiosqlite.connect(":memory:")
    assert not pending._thread.is_alive()  # not started before it is awaited: it can still become a daemon


async def _scenario(path: Path) -> None:
    engine = LocalSQLiteEngine(path=str(path))
    await open_engine(engine)
    await engine.run_ddl("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")
    for i in range(20):
        await engine._run_in_new_connection("INSERT INTO t (v) VALUES (?)", [f"v{i}"])
    assert len(engine._idle) == 1  # one connection served all twenty, one after another
    kept = engine._idle[0]
    assert kept._thread.daemon

    async with engine.transaction(transaction_type=TransactionType.immediate) as transaction:
        assert transaction.connection is kept  # the kept connection carries the transaction too
        await engine.run_ddl("INSERT INTO t (v) VALUES ('in-transaction')")
        # set once per connection, not before every statement as Piccolo's own engine does
        assert await engine.run_ddl("PRAGMA foreign_keys") == [{"foreign_keys": 1}]
        assert await engine.run_ddl("PRAGMA synchronous") == [{"synchronous": 1}]  # NORMAL
    assert engine._idle == [kept] and not kept.in_transaction

    with pytest.raises(RuntimeError):
        async with engine.transaction(transaction_type=TransactionType.immediate):
            await engine.run_ddl("INSERT INTO t (v) VALUES ('rolled-back')")
            raise RuntimeError("abort")
    assert engine._idle == [kept] and not kept.in_transaction
    rows = await engine._run_in_new_connection("SELECT count(*) AS n FROM t WHERE v = 'rolled-back'")
    assert rows == [{"n": 0}]

    with pytest.raises(sqlite3.IntegrityError):  # a failed statement leaves no open transaction behind
        await engine._run_in_new_connection("INSERT INTO t (v) VALUES ('v1')")
    assert all(not c.in_transaction for c in engine._idle)

    async def hold() -> None:  # many at once: at most IDLE_SQLITE_CONNECTIONS are kept afterwards
        async with engine.transaction():
            await engine.run_ddl("SELECT 1")
            await asyncio.sleep(0.01)

    await asyncio.gather(*(hold() for _ in range(IDLE_SQLITE_CONNECTIONS + 4)))
    assert len(engine._idle) == IDLE_SQLITE_CONNECTIONS
    await close_engine(engine)
    assert engine._idle == []


def test_connections_are_kept_reused_and_given_back_clean(tmp_path: Path) -> None:
    asyncio.run(_scenario(tmp_path / "pool.sqlite3"))
