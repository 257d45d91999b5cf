"""`bookwire worker` and `bookwire scheduler`, started by the CLI (app/cli.py, the composition root:
the one module of `app` allowed to import `workers`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.job_queue import JobQueue
from app.maintenance import install_periodic_jobs
from app.settings import Settings
from workers import context, queues

log = logging.getLogger("bookwire")


def _redis(settings: Settings) -> Redis:
    if settings.redis_url is None:
        raise SystemExit("REDIS_URL is not set: run `bookwire up` for an embedded Redis, or set REDIS_URL.")
    return Redis.from_url(settings.redis_url)


def _survive_redis_outages(run: Callable[[], object], what: str) -> None:
    """Run `run` again whenever it dies of a lost Redis connection, instead of exiting the process."""
    delay = 0.2
    while True:
        try:
            run()
            return
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("%s lost Redis (%s); starting again in %.1f s", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def worker(settings: Settings) -> None:
    """An RQ worker whose jobs share this process's one event loop (workers/context.py)."""
    connection = _redis(settings)
    context.start(settings, connection)
    # `queues.build_worker` is looked up at call time: bench/workers.py swaps in another worker class.
    _survive_redis_outages(lambda: queues.build_worker(connection).work(with_scheduler=False), "worker")


def scheduler(settings: Settings) -> None:
    """Register the periodic jobs, then run rq-scheduler, which moves due jobs to their queues."""
    connection = _redis(settings)
    _survive_redis_outages(lambda: install_periodic_jobs(JobQueue(connection), settings.sweep_interval),
                           "scheduler setup")
    _survive_redis_outages(lambda: queues.build_scheduler(connection).run(), "scheduler")
