"""The worker and the scheduler, built on the queues that `app/job_queue.py` names. Connections are
passed in, never found globally."""

from __future__ import annotations

import contextlib
import signal
import time
from types import FrameType

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq_scheduler import Scheduler

from app.job_queue import DEFAULT_QUEUE, QUEUE_NAMES

# rq-scheduler looks for due jobs every 60 s by default; reminders must fire within 2 s.
SCHEDULER_INTERVAL_SECONDS = 0.5


def queues(connection: Redis) -> list[Queue]:
    """The queues a worker listens on, most urgent first."""
    return [Queue(name, connection=connection) for name in QUEUE_NAMES]


def build_worker(connection: Redis) -> SimpleWorker:
    """A worker that runs jobs in its own process: RQ's default forks a work horse per job, which
    cost ~80 ms of CPU per job here (bench/workers.py) — more than the jobs themselves. Jobs are
    idempotent and bounded by JOB_TIMEOUT_SECONDS, and a crash is survived by `bookwire worker`'s
    supervisor (systemd) and the sweep, so the isolation of a fork buys little."""
    return SimpleWorker(queues(connection), connection=connection)


SCHEDULER_LOCK_MILLISECONDS = 1000


class ShortLockScheduler(Scheduler):
    """rq-scheduler whose lock lives 1 s instead of `interval + 10` s.

    Schedulers take turns through a Redis lock held only while they move due jobs (milliseconds).
    A scheduler SIGKILLed while holding it blocked every other one for the lock's TTL — 10 s with
    rq-scheduler's own, so reminders fired up to 11 s late. Should a long move outlive 1 s, a second
    scheduler may move the same job too: every Bookwire job is idempotent. Overrides
    `acquire_lock` (rq-scheduler pinned to 0.14; tests/unit/test_scheduler_lock.py checks it)."""

    stop_requested = False
    """Set by its SIGTERM/SIGINT handler: `bookwire scheduler` then stops even if Redis is down."""

    def _install_signal_handlers(self) -> None:
        """rq-scheduler's handler records its death and drops its lock in Redis, then exits; with
        Redis down the first step raised a ConnectionError instead, which looked like an outage to
        survive, so the process lived on. This one notes the request first and says goodbye only
        if Redis answers."""

        def stop(signum: int, frame: FrameType | None) -> None:
            self.stop_requested = True
            self.log.info("Shutting down RQ scheduler...")
            with contextlib.suppress(RedisError):
                self.register_death()
                self.remove_lock()
            raise SystemExit()

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)

    def acquire_lock(self) -> bool:
        self._lock_acquired = bool(self.connection.set(
            self.scheduler_lock_key, time.time(), px=SCHEDULER_LOCK_MILLISECONDS, nx=True))
        return self._lock_acquired


def build_scheduler(connection: Redis) -> Scheduler:
    """The rq-scheduler that moves due jobs to their queues, checking twice a second."""
    return ShortLockScheduler(queue_name=DEFAULT_QUEUE, connection=connection, interval=SCHEDULER_INTERVAL_SECONDS)
