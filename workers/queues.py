"""Queues, the scheduler, and deterministic job ids. Connections are passed in, never found globally.

The API and the jobs use `JobQueue` to hand work to workers: enqueue now, at a time, or cancel.
rq-scheduler keeps scheduled jobs in Redis (so they survive restarts with an AOF-backed Redis);
a job id is derived from what it is for, so scheduling the same thing twice replaces it and
cancelling needs no bookkeeping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from redis import Redis
from rq import Queue, SimpleWorker
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq_scheduler import Scheduler

EMAIL_QUEUE = "email"
DEFAULT_QUEUE = "default"
QUEUE_NAMES = (DEFAULT_QUEUE, EMAIL_QUEUE)  # reminders and deadlines first: they are due now
# rq-scheduler looks for due jobs every 60 s by default; reminders must fire within 2 s.
SCHEDULER_INTERVAL_SECONDS = 0.5
JOB_TIMEOUT_SECONDS = 120


# Reminders are not one job each: everything due in one second shares one job (see
# app/reminders/services.py), so a burst costs one job per second instead of one per reminder.
REMINDERS_JOB_PREFIX = "bookwire-reminders"


def expiry_job_id(booking_id: object) -> str:
    return f"bookwire-expire-{booking_id}"


def email_job_id(delivery_id: object, attempt: int) -> str:
    return f"bookwire-email-{delivery_id}-{attempt}"


def queues(connection: Redis) -> list[Queue]:
    """The queues a worker listens on, most urgent first."""
    return [Queue(name, connection=connection) for name in QUEUE_NAMES]


def build_worker(connection: Redis) -> SimpleWorker:
    """A worker that runs jobs in its own process: RQ's default forks a work horse per job, which
    cost ~80 ms of CPU per job here (bench/workers.py) — more than the jobs themselves. Jobs are
    idempotent and bounded by JOB_TIMEOUT_SECONDS, and a crash is survived by `bookwire worker`'s
    supervisor (systemd) and the sweep, so the isolation of a fork buys little."""
    return SimpleWorker(queues(connection), connection=connection)


def build_scheduler(connection: Redis) -> Scheduler:
    return Scheduler(queue_name=DEFAULT_QUEUE, connection=connection, interval=SCHEDULER_INTERVAL_SECONDS)


def _whole_second(when: datetime) -> datetime:
    """rq-scheduler keeps whole seconds (it truncates): round up, so nothing fires early."""
    when = when.astimezone(UTC)
    return when.replace(microsecond=0) + timedelta(seconds=1) if when.microsecond else when


class JobQueue:
    """Enqueue, schedule and cancel jobs (synchronous: the API calls it through a thread)."""

    def __init__(self, connection: Redis) -> None:
        self.connection = connection
        self.scheduler = Scheduler(queue_name=DEFAULT_QUEUE, connection=connection)

    def enqueue(self, func: Callable[..., Any], *args: Any, job_id: str, queue: str = DEFAULT_QUEUE) -> None:
        self.enqueue_many(func, [(args, job_id)], queue)

    def enqueue_many(self, func: Callable[..., Any], calls: list[tuple[tuple[Any, ...], str]],
                     queue: str = DEFAULT_QUEUE) -> None:
        """`enqueue` for each `(args, job_id)` in `calls`, in one Redis round trip."""
        Queue(queue, connection=self.connection).enqueue_many([
            Queue.prepare_data(func, args, job_id=job_id, timeout=JOB_TIMEOUT_SECONDS, result_ttl=3600)
            for args, job_id in calls
        ])

    def schedule(self, when: datetime, func: Callable[..., Any], *args: Any, job_id: str,
                 queue: str = DEFAULT_QUEUE) -> None:
        """Run `func(*args)` at `when` (aware; rq-scheduler reads naive times as UTC, RQ as local)."""
        self.cancel(job_id)  # enqueue_at with an existing id would leave the old schedule entry behind
        self.scheduler.enqueue_at(_whole_second(when), func, *args, job_id=job_id, queue_name=queue,
                                  timeout=JOB_TIMEOUT_SECONDS, job_result_ttl=3600)

    def schedule_shared(self, whens: Iterable[datetime], func: Callable[[], Any], *, prefix: str) -> None:
        """Run `func()` at each of `whens`, one job per whole second however many ask for it.

        The job id names its second, so a second already scheduled is left alone. Should the check
        race with the scheduler moving that job to its queue, the job runs twice: `func` must be a
        job that does whatever is due at the time it runs, so a second run finds nothing to do."""
        scheduled_key = self.scheduler.scheduled_jobs_key
        for when in sorted({_whole_second(w) for w in whens}):
            job_id = f"{prefix}-{int(when.timestamp())}"
            if self.connection.zscore(scheduled_key, job_id) is None:
                self.scheduler.enqueue_at(when, func, job_id=job_id, queue_name=DEFAULT_QUEUE,
                                          timeout=JOB_TIMEOUT_SECONDS, job_result_ttl=3600)

    def cancel(self, job_id: str) -> None:
        """Forget a scheduled job entirely (rq-scheduler's cancel leaves the job hash behind)."""
        self.scheduler.connection.zrem(self.scheduler.scheduled_jobs_key, job_id)
        try:
            Job.fetch(job_id, connection=self.connection).delete()
        except NoSuchJobError:
            pass
