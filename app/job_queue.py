"""The job queue: the names of the workers' jobs, their queues, deterministic job ids, and `JobQueue`
to enqueue, schedule and cancel them. Connections are passed in, never found globally.

Jobs are named by their dotted path (RQ and rq-scheduler import a job function from its name when it
runs), so this package hands work to `workers/` without importing it: `workers/` sits above `app/`.
rq-scheduler keeps scheduled jobs in Redis (so they survive restarts with an AOF-backed Redis); a job
id is derived from what it is for, so scheduling the same thing twice replaces it and cancelling
needs no bookkeeping.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from redis import Redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq_scheduler import Scheduler

# The job entry points of `workers/jobs.py`, by name (tests/unit/test_layering.py checks each exists).
SEND_EMAIL = "workers.jobs.send_email"
FIRE_DUE_REMINDERS = "workers.jobs.fire_due_reminders"
EXPIRE_BOOKING = "workers.jobs.expire_booking"
SWEEP = "workers.jobs.sweep"
CLEANUP = "workers.jobs.cleanup"
JOB_NAMES = (SEND_EMAIL, FIRE_DUE_REMINDERS, EXPIRE_BOOKING, SWEEP, CLEANUP)

EMAIL_QUEUE = "email"
DEFAULT_QUEUE = "default"
QUEUE_NAMES = (DEFAULT_QUEUE, EMAIL_QUEUE)  # reminders and deadlines first: they are due now
JOB_TIMEOUT_SECONDS = 120


# Reminders are not one job each: everything due in one second shares one job (see
# app/bookings/reminders.py), so a burst costs one job per second instead of one per reminder.
REMINDERS_JOB_PREFIX = "bookwire-reminders"


def expiry_job_id(booking_id: object) -> str:
    """The one response-deadline job of a booking."""
    return f"bookwire-expire-{booking_id}"


def email_job_id(delivery_id: object, attempt: int) -> str:
    """The job of one attempt at sending a delivery."""
    return f"bookwire-email-{delivery_id}-{attempt}"


def _whole_second(when: datetime) -> datetime:
    """rq-scheduler keeps whole seconds (it truncates): round up, so nothing fires early."""
    when = when.astimezone(UTC)
    return when.replace(microsecond=0) + timedelta(seconds=1) if when.microsecond else when


class JobQueue:
    """Enqueue, schedule and cancel jobs by name (synchronous: the API calls it through a thread)."""

    def __init__(self, connection: Redis) -> None:
        self.connection = connection
        self.scheduler = Scheduler(queue_name=DEFAULT_QUEUE, connection=connection)

    def enqueue(self, job: str, *args: Any, job_id: str, queue: str = DEFAULT_QUEUE) -> None:
        """Run `job(*args)` as soon as a worker is free."""
        self.enqueue_many(job, [(args, job_id)], queue)

    def enqueue_many(self, job: str, calls: list[tuple[tuple[Any, ...], str]], queue: str = DEFAULT_QUEUE) -> None:
        """`enqueue` for each `(args, job_id)` in `calls`, in one Redis round trip."""
        Queue(queue, connection=self.connection).enqueue_many([
            Queue.prepare_data(job, args, job_id=job_id, timeout=JOB_TIMEOUT_SECONDS, result_ttl=3600)
            for args, job_id in calls
        ])

    def schedule(self, when: datetime, job: str, *args: Any, job_id: str, queue: str = DEFAULT_QUEUE) -> None:
        """Run `job(*args)` at `when` (aware; rq-scheduler reads naive times as UTC, RQ as local)."""
        self.cancel(job_id)  # enqueue_at with an existing id would leave the old schedule entry behind
        self.scheduler.enqueue_at(_whole_second(when), job, *args, job_id=job_id, queue_name=queue,
                                  timeout=JOB_TIMEOUT_SECONDS, job_result_ttl=3600)

    def schedule_shared(self, whens: Iterable[datetime], job: str, *, prefix: str) -> None:
        """Run `job()` at each of `whens`, one job per whole second however many ask for it.

        The job id names its second, so a second already scheduled is left alone. Should the check
        race with the scheduler moving that job to its queue, the job runs twice: `job` must be one
        that does whatever is due at the time it runs, so a second run finds nothing to do."""
        scheduled_key = self.scheduler.scheduled_jobs_key
        for when in sorted({_whole_second(w) for w in whens}):
            job_id = f"{prefix}-{int(when.timestamp())}"
            if self.connection.zscore(scheduled_key, job_id) is None:
                self.scheduler.enqueue_at(when, job, job_id=job_id, queue_name=DEFAULT_QUEUE,
                                          timeout=JOB_TIMEOUT_SECONDS, job_result_ttl=3600)

    def schedule_periodic(self, job: str, *, job_id: str, interval: int, timeout: int) -> None:
        """Run `job()` now and every `interval` seconds, under a fixed id (scheduling again replaces it)."""
        self.cancel(job_id)
        self.scheduler.schedule(scheduled_time=datetime.now(UTC), func=job, interval=interval, repeat=None,
                                id=job_id, timeout=timeout, result_ttl=600)

    def cancel(self, job_id: str) -> None:
        """Forget a scheduled job entirely (rq-scheduler's cancel leaves the job hash behind)."""
        self.scheduler.connection.zrem(self.scheduler.scheduled_jobs_key, job_id)
        try:
            Job.fetch(job_id, connection=self.connection).delete()
        except NoSuchJobError:
            pass
