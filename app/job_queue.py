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
from rq_scheduler.utils import to_unix

# The job entry points of `workers/jobs.py`, by name (tests/unit/test_layering.py checks each exists).
SEND_EMAIL = "workers.jobs.send_email"
FIRE_DUE_REMINDERS = "workers.jobs.fire_due_reminders"
EXPIRE_BOOKING = "workers.jobs.expire_booking"
SWEEP = "workers.jobs.sweep"
CLEANUP = "workers.jobs.cleanup"
EMAIL_UNREAD = "workers.jobs.email_unread"
JOB_NAMES = (SEND_EMAIL, FIRE_DUE_REMINDERS, EXPIRE_BOOKING, SWEEP, CLEANUP, EMAIL_UNREAD)

EMAIL_QUEUE = "email"
DEFAULT_QUEUE = "default"
QUEUE_NAMES = (DEFAULT_QUEUE, EMAIL_QUEUE)  # reminders and deadlines first: they are due now
JOB_TIMEOUT_SECONDS = 120


# Reminders are not one job each: everything due in one second shares one job (see
# app/bookings/reminders.py), so a burst costs one job per second instead of one per reminder.
REMINDERS_JOB_PREFIX = "bookwire-reminders"


def expiry_job_id(booking_id: object, offered_at: datetime | None = None) -> str:
    """The response-deadline job of a booking's current offer: one per booking, and one more each
    time a pooled request moves on (`offered_at`), so that the job being run is never scheduled again
    under its own id."""
    return f"bookwire-expire-{booking_id}" + (f"-{int(offered_at.timestamp() * 1000)}" if offered_at else "")


def unread_email_job_id(booking_id: object, user_id: object, seq: int) -> str:
    """The unread-messages email of one recipient, planned when message `seq` was posted."""
    return f"bookwire-unread-{booking_id}-{user_id}-{seq}"


def email_job_id(delivery_id: object, attempt: int) -> str:
    """The job of one attempt at sending a delivery."""
    return f"bookwire-email-{delivery_id}-{attempt}"


def _whole_second(when: datetime) -> datetime:
    """rq-scheduler keeps whole seconds (it truncates): round up, so nothing fires early."""
    when = when.astimezone(UTC)
    return when.replace(microsecond=0) + timedelta(seconds=1) if when.microsecond else when


class JobQueue:
    """The connection RQ and rq-scheduler use, and the few jobs not recorded in an outbox: the
    sweep's re-enqueues and the periodic jobs (synchronous Redis; changes use `JobBatch` through the
    outbox relay)."""

    def __init__(self, connection: Redis) -> None:
        self.connection = connection
        self.scheduler = Scheduler(queue_name=DEFAULT_QUEUE, connection=connection)

    def enqueue(self, job: str, *args: Any, job_id: str, queue: str = DEFAULT_QUEUE) -> None:
        """Run `job(*args)` as soon as a worker is free."""
        Queue(queue, connection=self.connection).enqueue_many([
            Queue.prepare_data(job, args, job_id=job_id, timeout=JOB_TIMEOUT_SECONDS, result_ttl=3600)])

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


class JobBatch:
    """Enqueue, schedule and cancel many jobs in one Redis round trip (`send`), in the order given.

    Scheduling writes what rq-scheduler's `enqueue_at` writes — the job hash (made by its
    `_create_job`) and the job's entry in its sorted set — into one pipeline instead of two round
    trips per job; rq-scheduler is pinned to 0.14 for this, and tests/unit/test_job_batch.py checks
    that the scheduler moves such a job to its queue. A shared job (one per whole second) is
    written unconditionally, its entry only if absent (`ZADD NX`): writing it again changes nothing."""

    def __init__(self, jobs: JobQueue) -> None:
        self._jobs = jobs
        self._pipe = jobs.connection.pipeline(transaction=False)
        self._queues: dict[str, Queue] = {}
        self.size = 0

    def enqueue(self, job: str, *args: Any, job_id: str, queue: str = DEFAULT_QUEUE) -> None:
        if queue not in self._queues:
            self._queues[queue] = Queue(queue, connection=self._jobs.connection)
        self._queues[queue].enqueue_many([Queue.prepare_data(
            job, args, job_id=job_id, timeout=JOB_TIMEOUT_SECONDS, result_ttl=3600)], pipeline=self._pipe)
        self.size += 1

    def schedule(self, when: datetime, job: str, *args: Any, job_id: str, queue: str = DEFAULT_QUEUE,
                 only_if_new: bool = False) -> None:
        scheduler = self._jobs.scheduler
        created = scheduler._create_job(job, args=args, id=job_id, timeout=JOB_TIMEOUT_SECONDS, result_ttl=3600,
                                        queue_name=queue, commit=False)
        created.save(pipeline=self._pipe)
        self._pipe.zadd(scheduler.scheduled_jobs_key, {job_id: to_unix(_whole_second(when))}, nx=only_if_new)
        self.size += 1

    def schedule_shared(self, whens: Iterable[datetime], job: str, *, prefix: str) -> None:
        """Run `job()` at each of `whens`, one job per whole second however many ask for it. Should
        this race with the scheduler moving that second's job to its queue, the job runs twice: `job`
        must do whatever is due when it runs, so a second run finds nothing to do."""
        for when in sorted({_whole_second(w) for w in whens}):
            self.schedule(when, job, job_id=f"{prefix}-{int(when.timestamp())}", only_if_new=True)

    def cancel(self, job_id: str) -> None:
        self._pipe.zrem(self._jobs.scheduler.scheduled_jobs_key, job_id)
        self._pipe.delete(Job.key_for(job_id))
        self.size += 1

    def send(self) -> None:
        if self.size:
            self._pipe.execute()
