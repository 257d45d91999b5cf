"""What an API process opens at start and closes at stop: the database engine, Redis, the event
bus's live subscription, the outbox relay, the hub's ticker and the presence refresher."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from piccolo.engine.base import Engine

from app.accounts.services import ensure_admin
from app.db.engine import close_engine, open_engine, relay_node
from app.effects import make_effects
from app.errors import AppError
from app.job_queue import JobQueue
from app.realtime.bus import RESUBSCRIBED, EventBus
from app.realtime.hub import Hub
from app.realtime.presence import EXPIRE_SECONDS, Presence
from app.redis_url import redis_client, sync_redis_client
from app.security import forget_account
from app.settings import Settings

log = logging.getLogger(__name__)


def _on_control(hub: Hub) -> Callable[[dict[str, str]], None]:
    def handle(message: dict[str, str]) -> None:
        if RESUBSCRIBED in message:  # control messages may have been missed meanwhile
            forget_account(None)
        if "forget_user" in message:
            forget_account(uuid.UUID(message["forget_user"]))
        if "close_user" in message:
            forget_account(uuid.UUID(message["close_user"]))
            hub.close_user(uuid.UUID(message["close_user"]), message.get("reason", "deactivated"))
        if "drop_channel" in message:
            hub.drop_channel(message["drop_channel"], message.get("keep_user", ""))

    return handle


async def _every(seconds: float, job: Callable[[], Any]) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()
        except Exception as exc:  # a missed refresh is retried on the next round
            log.warning("periodic %s failed: %s", getattr(job, "__name__", job), exc)


SHUTDOWN_STEP_SECONDS = 2.0
"""Longest wait for each step of the shutdown (tasks, presence, database pool): with uvicorn's 5 s
for open requests, a stop takes at most ~11 s, inside the usual 30 s grace period."""


async def _bounded(step: Awaitable[Any], what: str) -> None:
    try:
        await asyncio.wait_for(step, SHUTDOWN_STEP_SECONDS)
    except TimeoutError:
        log.warning("shutdown: gave up waiting for %s after %.0f s", what, SHUTDOWN_STEP_SECONDS)


def lifespan(settings: Settings, engine: Engine) -> Callable[[Litestar], Any]:
    """A Litestar lifespan bound to this process's settings and engine."""

    @asynccontextmanager
    async def run(app: Litestar) -> AsyncIterator[None]:
        if settings.redis_url is None:
            raise RuntimeError("REDIS_URL is not set: run `bookwire up` for an embedded Redis, or set REDIS_URL.")
        await open_engine(engine)
        redis = redis_client(settings.redis_url)
        hub = Hub(settings.sse_queue_size, settings.sse_heartbeat_seconds, app.state.metrics.latency,
                  settings.max_streams_per_user)
        bus = EventBus(redis, settings.stream_retention)
        presence = Presence(redis, hub, bus, settings.presence_offline_after)
        jobs = JobQueue(sync_redis_client(settings.redis_url))
        effects = make_effects(bus, jobs, settings, relay_node(engine))
        app.state.update(redis=redis, hub=hub, bus=bus, presence=presence, effects=effects)
        ready = asyncio.Event()
        tasks = [
            asyncio.create_task(bus.follow(hub.dispatch, _on_control(hub), ready, hub.dispatch_ephemeral),
                                name="bus-follow"),
            asyncio.create_task(hub.run_ticker(), name="hub-ticker"),
            asyncio.create_task(effects.relay.run(), name="outbox-relay"),
            asyncio.create_task(_every(presence.refresh_seconds, presence.publish_counts), name="presence"),
            asyncio.create_task(_every(EXPIRE_SECONDS, presence.expire), name="presence-expiry"),
        ]
        try:
            await asyncio.wait_for(ready.wait(), timeout=10)
            if settings.admin_email and settings.admin_password:
                try:
                    await ensure_admin(settings.admin_email, settings.admin_password)
                except AppError as refusal:  # the admin asked for cannot exist: do not serve without it
                    log.error("ADMIN_EMAIL: %s", refusal.detail)
                    raise
            yield
        finally:
            hub.close_all("shutdown")
            await asyncio.sleep(0)  # let writers send their `stream.closing`
            for task in tasks:
                task.cancel()
            # Each step is bounded: a database or Redis that is unreachable must not keep a process
            # that was asked to stop from stopping (a cancelled query can hang on its cancellation).
            await _bounded(asyncio.gather(*tasks, return_exceptions=True), "background tasks")
            with contextlib.suppress(Exception):
                await _bounded(presence.forget(), "presence")
            await redis.aclose()
            jobs.connection.close()
            await close_engine(engine, timeout=SHUTDOWN_STEP_SECONDS)

    return run
