"""Build the Piccolo engine for a `DATABASE_URL` and bind every table to it.

Piccolo resolves a table's engine lazily on first use and caches it, so a process binds the engine
explicitly before its first query instead of relying on whatever `piccolo_conf` saw at import time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from piccolo.engine.base import Engine
from piccolo.engine.postgres import PostgresEngine
from piccolo.engine.sqlite import SQLiteEngine

# SQLite serialises writers; a generous busy timeout makes racing writers wait instead of failing.
SQLITE_BUSY_TIMEOUT_SECONDS = 30.0


class LocalSQLiteEngine(SQLiteEngine):
    """SQLite with an in-process queue for writers.

    SQLite lets one writer in at a time and makes the others poll with growing sleeps, so under
    load late arrivals overtake early ones and the tail latency reaches seconds. Writers of this
    process wait their turn on `write_lock` (first come, first served) and only then take the
    database lock; the busy timeout still arbitrates between processes sharing the file.
    """

    def __init__(self, path: str, **connection_kwargs: Any) -> None:
        super().__init__(path=path, **connection_kwargs)
        self.write_lock = asyncio.Lock()


def engine_from_url(url: str) -> Engine:
    """A SQLite or PostgreSQL engine for `sqlite:///path` or `postgresql://...`."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        path = Path(url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else parsed.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return LocalSQLiteEngine(path=str(path), timeout=SQLITE_BUSY_TIMEOUT_SECONDS)
    if parsed.scheme in {"postgres", "postgresql"}:
        return PostgresEngine(config={"dsn": url})
    raise ValueError(f"DATABASE_URL={url!r}: use sqlite:///path or postgresql://user@host/db")


def bind_engine(engine: Engine) -> None:
    """Point every Bookwire table at `engine` (before any query runs)."""
    from app.db.tables import ALL_TABLES

    for table in ALL_TABLES:
        table._meta._db = engine


async def open_engine(engine: Engine) -> None:
    """Start the connection pool (PostgreSQL) or switch on WAL (SQLite)."""
    if isinstance(engine, PostgresEngine):
        await engine.start_connection_pool(min_size=2, max_size=20)
    elif isinstance(engine, SQLiteEngine):
        # WAL lets readers proceed while one writer holds the lock; it is a property of the file.
        await engine.run_ddl("PRAGMA journal_mode=WAL")


async def close_engine(engine: Engine) -> None:
    """Close the connection pool, if there is one."""
    if isinstance(engine, PostgresEngine):
        await engine.close_connection_pool()
