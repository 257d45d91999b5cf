"""What a worker process sets up once and its jobs share: one event loop, the database engine (a
connection pool on PostgreSQL), and `Effects` (settings, the job queue, the event bus's Redis client).

This is the worker's counterpart of the API's lifespan: `bookwire worker` calls `start()` before
taking jobs. RQ would run each coroutine job in a new event loop of its own, which rules out any
pool or client kept across jobs; so jobs are plain functions made with `@job`, which run their
coroutine on this process's one loop, where the pool and the Redis client live.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from redis import Redis

from app.db.engine import bind_engine, engine_from_url, open_engine, relay_node
from app.effects import Effects, make_effects
from app.job_queue import JobQueue
from app.realtime.bus import EventBus
from app.redis_url import redis_client
from app.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class WorkerContext:
    """What the job entry points hand to the area functions (`effects`), and the loop they run on."""

    effects: Effects  # what the services need to publish events and enqueue jobs, as in the API
    loop: asyncio.AbstractEventLoop

    @property
    def settings(self) -> Settings:
        return self.effects.settings

    @property
    def jobs(self) -> JobQueue:
        return self.effects.jobs


_context: WorkerContext | None = None


def start(settings: Settings, connection: Redis) -> WorkerContext:
    """Bind the tables to the configured database and open it on this process's event loop."""
    global _context
    assert settings.redis_url is not None
    engine = engine_from_url(settings.database_url)
    bind_engine(engine)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(open_engine(engine))
    bus = EventBus(redis_client(settings.redis_url), settings.stream_retention)
    _context = WorkerContext(make_effects(bus, JobQueue(connection), settings, relay_node(engine)), loop)
    return _context


def current() -> WorkerContext:
    """This process's context (`start()` must have run: `bookwire worker` does it)."""
    if _context is None:
        raise RuntimeError("workers.context.start() was not called: run jobs through `bookwire worker`")
    return _context


async def _then_relay(effects: Effects, work: Coroutine[Any, Any, R]) -> R:
    try:
        return await work
    finally:
        if effects.relay.woken:
            try:
                await effects.relay.drain()
                await effects.relay.settle()
            except Exception as exc:  # the rows stay; another relay carries them out
                logging.getLogger(__name__).warning("outbox relay after job: %s", exc)


def job(work: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, R]:
    """An RQ job function that runs the coroutine `work` on the worker process's event loop.

    RQ finds a job by its module and name, which `functools.wraps` keeps. Should the job be
    interrupted (RQ's timeout raises inside the loop), its task is cancelled, so it does not go on
    running during the next job. A job that committed outbox rows carries them out before it ends
    (a worker runs no background task between jobs); if that fails, the rows wait for the API's
    relays or the next sweep."""

    @functools.wraps(work)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        context = current()
        task = context.loop.create_task(_then_relay(context.effects, work(*args, **kwargs)))
        try:
            return context.loop.run_until_complete(task)
        except BaseException:
            task.cancel()
            raise

    return run
