"""`bookwire webhooks`: the webhook dispatcher process (app/webhooks/delivery.py). Every
`bookwire worker` starts one beside itself and stops it when it stops; it can also run alone.

It is a process of its own, with its own event loop, database pool and Redis client, so that its
many concurrent HTTP requests (one per webhook being served) never hold up the worker's jobs, and
a receiver that stalls holds only its own deliveries. Its relay carries out the `system.alert`
changes it makes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import sys

from app.db.engine import bind_engine, close_engine, engine_from_url, open_engine, relay_node
from app.effects import make_effects
from app.job_queue import JobQueue
from app.realtime.bus import EventBus
from app.redis_url import redis_client, sync_redis_client
from app.settings import Settings
from app.webhooks.delivery import Dispatcher

log = logging.getLogger("bookwire")


async def _serve(settings: Settings) -> None:
    assert settings.redis_url is not None
    engine = engine_from_url(settings.database_url)
    bind_engine(engine)
    await open_engine(engine)
    redis = redis_client(settings.redis_url)
    effects = make_effects(EventBus(redis, settings.stream_retention), JobQueue(sync_redis_client(settings.redis_url)),
                           settings, relay_node(engine))
    dispatcher = Dispatcher(redis, effects.change, settings.webhook_retry_intervals, settings.webhook_allow_private)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    tasks = [asyncio.create_task(dispatcher.run(), name="webhooks"),
             asyncio.create_task(effects.relay.run(), name="webhooks-relay")]
    log.info("webhook dispatcher %s started", dispatcher.owner)
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):  # carry out the last alerts, if the database and Redis let us
            await asyncio.wait_for(effects.relay.drain(), 5)
        await dispatcher.client.aclose()
        await redis.aclose()
        await close_engine(engine)


def dispatcher(settings: Settings) -> None:
    """Run the dispatcher until SIGTERM or SIGINT."""
    if settings.redis_url is None:
        raise SystemExit("REDIS_URL is not set: run `bookwire up` for an embedded Redis, or set REDIS_URL.")
    asyncio.run(_serve(settings))


def start_beside_worker() -> subprocess.Popen[bytes]:
    """A `bookwire webhooks` child of this worker, which dies with it (Linux: PR_SET_PDEATHSIG)."""
    return subprocess.Popen([sys.executable, "-m", "app.cli", "webhooks"], preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
