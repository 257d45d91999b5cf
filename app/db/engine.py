"""Build the Piccolo engine for a `DATABASE_URL` and bind every table to it.

Piccolo resolves a table's engine lazily on first use and caches it, so a process binds the engine
explicitly before its first query instead of relying on whatever `piccolo_conf` saw at import time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiosqlite
from piccolo.engine.base import Engine
from piccolo.engine.postgres import PostgresEngine
from piccolo.engine.sqlite import SQLiteEngine, SQLiteTransaction, TransactionType, dict_factory
from piccolo.table import Table

# SQLite serialises writers; a generous busy timeout makes racing writers wait instead of failing.
SQLITE_BUSY_TIMEOUT_SECONDS = 30.0


IDLE_SQLITE_CONNECTIONS = 8
RELAY_NODE = "relay"


class LocalSQLiteEngine(SQLiteEngine):
    """SQLite with an in-process queue for writers, and connections that are kept and reused.

    SQLite lets one writer in at a time and makes the others poll with growing sleeps, so under
    load late arrivals overtake early ones and the tail latency reaches seconds. Writers of this
    process wait their turn on `write_lock` (first come, first served) and only then take the
    database lock; the busy timeout still arbitrates between processes sharing the file.

    Piccolo's SQLiteEngine opens a new connection (and aiosqlite a new thread) for every query
    outside a transaction and for every transaction, about 1 ms of CPU each; this engine keeps up
    to IDLE_SQLITE_CONNECTIONS idle connections and hands them out again. It overrides Piccolo
    internals (`_run_in_new_connection`, `_run_in_existing_connection`, the transaction's
    `__aexit__`) and aiosqlite's (the connection's `_thread`), so `pyproject.toml` pins both minor
    versions and tests/unit/test_sqlite_pool.py fails loudly when they move.
    """

    def __init__(self, path: str, **connection_kwargs: Any) -> None:
        super().__init__(path=path, **connection_kwargs)
        self.write_lock = asyncio.Lock()
        self._idle: list[aiosqlite.Connection] = []

    async def get_connection(self) -> aiosqlite.Connection:
        """An idle connection, or a new one."""
        if self._idle:
            return self._idle.pop()
        pending = aiosqlite.connect(**self.connection_kwargs)
        # aiosqlite runs each connection in a thread of its own, not a daemon one: a kept connection
        # would hold a finished process (a CLI command, a stopping worker) open.
        pending._thread.daemon = True
        connection = await pending
        connection.row_factory = dict_factory  # type: ignore[assignment]  # as in Piccolo's own connections
        await connection.execute("PRAGMA foreign_keys = 1")
        # In WAL mode, NORMAL syncs the log at checkpoints rather than at every COMMIT: a commit
        # survives the process crashing, but the last ones may be lost if the machine loses
        # power. FULL cost an fsync per write transaction, which capped SQLite at ~20 writes/s.
        await connection.execute("PRAGMA synchronous = NORMAL")
        return connection

    async def release(self, connection: aiosqlite.Connection, healthy: bool = True) -> None:
        """Give a connection back (closed instead when unhealthy, or when enough are idle)."""
        if healthy and len(self._idle) < IDLE_SQLITE_CONNECTIONS and not connection.in_transaction:
            self._idle.append(connection)
        else:
            await connection.close()

    async def close_idle(self) -> None:
        while self._idle:
            await self._idle.pop().close()

    async def _run_in_new_connection(
        self, query: str, args: list[Any] | None = None, query_type: str = "generic",
        table: type[Table] | None = None,
    ) -> Any:
        connection = await self.get_connection()
        healthy = False
        try:
            async with connection.execute(query, args or []) as cursor:
                await connection.commit()
                rows = await cursor.fetchall()
            healthy = True
            return rows
        finally:
            await self.release(connection, healthy)

    async def _run_in_existing_connection(
        self, connection: aiosqlite.Connection, query: str, args: list[Any] | None = None,
        query_type: str = "generic", table: type[Table] | None = None,
    ) -> Any:
        # Piccolo's own runs `PRAGMA foreign_keys = 1` before every statement of a transaction: a
        # second trip to the connection's thread. Our connections set it once, when made.
        async with connection.execute(query, args or []) as cursor:
            return await cursor.fetchall()

    def transaction(
        self, transaction_type: TransactionType = TransactionType.deferred, allow_nested: bool = True
    ) -> SQLiteTransaction:
        return _PooledTransaction(engine=self, transaction_type=transaction_type, allow_nested=allow_nested)


class _PooledTransaction(SQLiteTransaction):
    """Piccolo's SQLite transaction, giving its connection back to the engine instead of closing it."""

    async def __aexit__(self, exception_type: Any, exception: BaseException | None, traceback: Any) -> bool:
        if self._parent:
            return exception is None
        healthy = True
        try:
            if exception:
                if not self._rolled_back:
                    await self.rollback()
            elif not self._committed and not self._rolled_back:
                await self.commit()
        except BaseException:
            healthy = False
            raise
        finally:
            engine = self.engine
            assert isinstance(engine, LocalSQLiteEngine)
            await engine.release(self.connection, healthy)
            engine.current_transaction.reset(self.context)
        return exception is None


def engine_from_url(url: str) -> Engine:
    """A SQLite or PostgreSQL engine for `sqlite:///path` or `postgresql://...`."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        path = Path(url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else parsed.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return LocalSQLiteEngine(path=str(path), timeout=SQLITE_BUSY_TIMEOUT_SECONDS)
    if parsed.scheme in {"postgres", "postgresql"}:
        # The outbox relay reads on a small pool of its own: under load the main pool is all taken by
        # requests, and a relay queueing behind them delayed every event by hundreds of milliseconds.
        return PostgresEngine(config={"dsn": url}, extra_nodes={RELAY_NODE: PostgresEngine(config={"dsn": url})})
    raise ValueError(f"DATABASE_URL={url!r}: use sqlite:///path or postgresql://user@host/db")


def bind_engine(engine: Engine) -> None:
    """Point every Bookwire table at `engine` (before any query runs)."""
    from app.db.tables import ALL_TABLES

    for table in ALL_TABLES:
        table._meta._db = engine


def relay_node(engine: Engine) -> str | None:
    """The node the outbox relay runs its reads on (`query.run(node=...)`), None for the main one."""
    return RELAY_NODE if RELAY_NODE in getattr(engine, "extra_nodes", {}) else None


async def _keep_session(connection: object) -> None:
    """What a connection needs on its way back to the pool, beyond the rollback of an open
    transaction that asyncpg always does: nothing. asyncpg's default reset sends `SELECT
    pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` — a round trip for every query run
    outside a transaction — and Bookwire sets no session state, takes no advisory lock, opens no
    cursor across statements and listens to nothing."""


async def open_engine(engine: Engine) -> None:
    """Start the connection pools (PostgreSQL) or switch on WAL (SQLite)."""
    if isinstance(engine, PostgresEngine):
        await engine.start_connection_pool(min_size=2, max_size=20, reset=_keep_session)
        for node in engine.extra_nodes.values():
            await node.start_connection_pool(min_size=1, max_size=2, reset=_keep_session)
    elif isinstance(engine, SQLiteEngine):
        # WAL lets readers proceed while one writer holds the lock; it is a property of the file.
        await engine.run_ddl("PRAGMA journal_mode=WAL")


async def close_engine(engine: Engine, timeout: float | None = None) -> None:
    """Close the connection pool, if there is one; after `timeout` seconds, drop its connections.

    asyncpg's `Pool.close` waits for every connection to come back, and one that a cancelled query
    still holds while PostgreSQL is unreachable without a reset (packets dropped) never does: its
    cancellation waits on a connection to the server that cannot open. That once kept an API
    process from exiting on SIGTERM after an outage; `terminate` closes the sockets at once."""
    if isinstance(engine, PostgresEngine):
        for node in (engine, *engine.extra_nodes.values()):
            try:
                await asyncio.wait_for(node.close_connection_pool(), timeout)
            except TimeoutError:
                if node.pool is not None:
                    node.pool.terminate()
                    node.pool = None
    elif isinstance(engine, LocalSQLiteEngine):
        await engine.close_idle()
