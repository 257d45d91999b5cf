"""What a worker process sets up once and its jobs share: settings, the database engine binding,
and a synchronous Redis connection for enqueueing follow-up jobs.

This is the worker's counterpart of the API's lifespan: `bookwire worker` calls `start()` before
taking jobs; jobs call `current()`. Async resources (event-bus Redis clients) are made per job,
because RQ runs each coroutine job in a fresh event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from redis import Redis

from app.db.engine import bind_engine, engine_from_url
from app.lifespan import redis_client
from app.realtime.bus import EventBus
from app.settings import Settings
from workers.queues import JobQueue


@dataclass(frozen=True)
class WorkerContext:
    settings: Settings
    jobs: JobQueue


_context: WorkerContext | None = None


def start(settings: Settings, connection: Redis) -> WorkerContext:
    """Bind the tables to the configured database (no pool: each job has its own loop)."""
    global _context
    bind_engine(engine_from_url(settings.database_url))
    _context = WorkerContext(settings, JobQueue(connection))
    return _context


def current() -> WorkerContext:
    if _context is None:
        raise RuntimeError("workers.context.start() was not called: run jobs through `bookwire worker`")
    return _context


@asynccontextmanager
async def event_bus() -> AsyncIterator[EventBus]:
    """An event bus on a Redis client that lives as long as one job."""
    settings = current().settings
    assert settings.redis_url is not None
    redis = redis_client(settings.redis_url)
    try:
        yield EventBus(redis, settings.stream_retention)
    finally:
        await redis.aclose()
