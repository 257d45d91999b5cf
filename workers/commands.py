"""`bookwire worker` and `bookwire scheduler`, started by the CLI (app/cli.py, the composition root:
the one module of `app` allowed to import `workers`)."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Callable
from types import FrameType

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.job_queue import JobQueue
from app.maintenance import install_periodic_jobs
from app.redis_url import sync_redis_client
from app.settings import Settings
from workers import context, queues, webhooks

log = logging.getLogger("bookwire")


def _redis(settings: Settings) -> Redis:
    if settings.redis_url is None:
        raise SystemExit("REDIS_URL is not set: run `bookwire up` for an embedded Redis, or set REDIS_URL.")
    return sync_redis_client(settings.redis_url)


def _survive_redis_outages(run: Callable[[], object], what: str) -> None:
    """Run `run` again whenever it dies of a lost Redis connection, instead of exiting the process.

    `run` returns when it was asked to stop (SIGTERM, SIGINT), even if Redis is down then; between
    two runs a signal ends the process at once (the library's handler of the last run, still
    installed, would raise into this loop or try to talk to Redis)."""
    delay = 0.2
    while True:
        try:
            run()
            return
        except (RedisConnectionError, RedisTimeoutError) as exc:
            log.warning("%s lost Redis (%s); starting again in %.1f s", what, exc, delay)
            previous = {sig: signal.signal(sig, _exit_now) for sig in (signal.SIGTERM, signal.SIGINT)}
            try:
                time.sleep(delay)
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
            delay = min(delay * 2, 5.0)


def _exit_now(signum: int, frame: FrameType | None) -> None:
    log.info("stopping on %s", signal.Signals(signum).name)
    raise SystemExit(0)


def _run_worker(connection: Redis) -> None:
    """One RQ worker's life; a stop it was asked for ends it, even when Redis is down meanwhile."""
    # `queues.build_worker` is looked up at call time: bench/workers.py swaps in another worker class.
    worker = queues.build_worker(connection)
    try:
        worker.work(with_scheduler=False)
    except (RedisConnectionError, RedisTimeoutError):
        # RQ's SIGTERM handler (`request_stop`, rq pinned <3) notes the time it was asked to stop,
        # ends the work loop, and then fails to record the worker's death in a Redis that is down:
        # that failure must not be taken for an outage to start again after.
        if getattr(worker, "_shutdown_requested_date", None) is not None:
            log.info("worker stopped on request (Redis unreachable: its registration expires by itself)")
            return
        raise
    if getattr(worker, "_shutdown_requested_date", None) is None:
        # RQ's work loop logs "found an unhandled exception, quitting" and *returns* when a Redis
        # command fails while it waits for a job (a failover, a restart): that is no stop.
        raise RedisConnectionError("the RQ work loop ended on an error, not on a stop request")


def _run_scheduler(connection: Redis) -> None:
    """One rq-scheduler's life; like `_run_worker`, a stop ends it even when Redis is down."""
    scheduler = queues.build_scheduler(connection)
    try:
        scheduler.run()
    except (RedisConnectionError, RedisTimeoutError):
        if getattr(scheduler, "stop_requested", False):
            log.info("scheduler stopped on request (Redis unreachable)")
            return
        raise


def worker(settings: Settings) -> None:
    """An RQ worker whose jobs share this process's one event loop (workers/context.py), and the
    webhook dispatcher beside it (a child process: workers/webhooks.py)."""
    connection = _redis(settings)
    context.start(settings, connection)
    dispatcher = webhooks.start_beside_worker()
    try:
        _survive_redis_outages(lambda: _run_worker(connection), "worker")
    finally:
        dispatcher.terminate()
        try:
            dispatcher.wait(timeout=10)
        except subprocess.TimeoutExpired:
            dispatcher.kill()


def scheduler(settings: Settings) -> None:
    """Register the periodic jobs, then run rq-scheduler, which moves due jobs to their queues."""
    connection = _redis(settings)
    _survive_redis_outages(lambda: install_periodic_jobs(JobQueue(connection), settings.sweep_interval),
                           "scheduler setup")
    _survive_redis_outages(lambda: _run_scheduler(connection), "scheduler")
