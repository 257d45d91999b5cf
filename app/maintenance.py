"""Periodic upkeep, run by the workers: the sweep that re-enqueues lost jobs, and the cleanup.

- sweep: carry out outbox rows left behind (when no API process runs a relay), and re-enqueue work
  whose job went missing (a killed worker, a Redis that lost its schedule): emails, reminders,
  response deadlines, unread-messages emails.
- cleanup: trim event history past retention, delete old fired reminders, read notifications and
  Idempotency-Key records past their 24 h.

`install_periodic_jobs` registers both with rq-scheduler (`bookwire scheduler` calls it at start).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from app.db.tables import Booking, EmailDelivery, MessageReceipt, Notification, Reminder, WebhookDelivery
from app.effects import Effects
from app.idempotency import forget_expired
from app.job_queue import (
    CLEANUP,
    EMAIL_QUEUE,
    EMAIL_UNREAD,
    EXPIRE_BOOKING,
    FIRE_DUE_REMINDERS,
    REMINDERS_JOB_PREFIX,
    SEND_EMAIL,
    SWEEP,
    JobQueue,
    email_job_id,
    expiry_job_id,
    unread_email_job_id,
)
from app.realtime.bus import CHANNEL_STREAM_PATTERN, GLOBAL_STREAM

CLEANUP_INTERVAL_SECONDS = 3600
KEEP_DAYS = 30


async def sweep(effects: Effects) -> None:
    """Carry out outbox rows nobody carried out; re-enqueue what is due but has no job any more.
    Every job it touches is idempotent."""
    await effects.relay.drain()
    await effects.relay.settle()
    jobs = effects.jobs
    now = datetime.now(UTC)
    late = now - timedelta(seconds=3)
    if await Reminder.exists().where(Reminder.status == "scheduled", Reminder.due_at < late):
        jobs.enqueue(FIRE_DUE_REMINDERS, job_id=f"{REMINDERS_JOB_PREFIX}-sweep")
    # A retry's job runs when it is due; 30 s past that, it is lost. (A delivery queued before
    # next_attempt_at existed waits at most the longest retry interval.)
    overdue = now - timedelta(seconds=30)
    forgotten = now - timedelta(seconds=max(effects.settings.email_retry_intervals or (0,)) + 30)
    lost = ((EmailDelivery.status == "sending") & (EmailDelivery.claimed_until < now)) | (
        (EmailDelivery.status == "queued") & (EmailDelivery.next_attempt_at < overdue)) | (
        (EmailDelivery.status == "queued") & EmailDelivery.next_attempt_at.is_null()
        & (EmailDelivery.attempts > 0) & (EmailDelivery.updated_at < forgotten))
    if not jobs.connection.llen(f"rq:queue:{EMAIL_QUEUE}"):
        # Never tried, and no job waiting: the job that carried it (with the rest of its change's
        # emails) died with its worker while sending an earlier one. Older than one send's claim,
        # so a job still at work on its batch just sees its next claim taken (claims keep it once).
        unsent_since = now - timedelta(seconds=effects.settings.email_send_timeout + 5)
        lost = lost | ((EmailDelivery.status == "queued") & (EmailDelivery.attempts == 0)
                       & (EmailDelivery.created_at < unsent_since))
    waiting = await EmailDelivery.select(EmailDelivery.id, EmailDelivery.attempts).where(lost)
    for row in waiting:
        jobs.enqueue(SEND_EMAIL, str(row["id"]), job_id=email_job_id(row["id"], row["attempts"]) + "-sweep",
                     queue=EMAIL_QUEUE)
    unread = await MessageReceipt.select(MessageReceipt.booking_id, MessageReceipt.user_id).where(
        MessageReceipt.email_pending == True, MessageReceipt.email_due_at < late)  # noqa: E712
    for row in unread:  # an unread-messages email whose job went missing
        jobs.enqueue(EMAIL_UNREAD, str(row["booking_id"]), str(row["user_id"]),
                     job_id=unread_email_job_id(row["booking_id"], row["user_id"], 0) + "-sweep")
    deadline: Any = Booking.resource_id.response_deadline_seconds  # a column of the joined resource
    pending = await Booking.select(Booking.id, Booking.created_at, Booking.offered_at,
                                   deadline.as_alias("deadline")).where(
        Booking.status == "pending", deadline.is_not_null()
    )
    for row in pending:  # the deadline runs from when the current owner was asked (a pooled booking moves on)
        seconds = row["deadline"]
        if seconds and (row["offered_at"] or row["created_at"]) + timedelta(seconds=seconds) < late:
            jobs.enqueue(EXPIRE_BOOKING, str(row["id"]),
                         job_id=expiry_job_id(row["id"], row["offered_at"]) + "-sweep")


async def cleanup(effects: Effects) -> None:
    """Trim event history past retention; delete fired reminders, read notifications and finished
    webhook deliveries > 30 days old."""
    cutoff = datetime.now(UTC) - timedelta(days=KEEP_DAYS)
    await Reminder.delete().where(Reminder.status != "scheduled", Reminder.due_at < cutoff)
    await Notification.delete().where(Notification.read_at.is_not_null(), Notification.read_at < cutoff)
    await WebhookDelivery.delete().where(WebhookDelivery.status != "pending", WebhookDelivery.updated_at < cutoff)
    await forget_expired()
    min_id = max(int(datetime.now(UTC).timestamp() * 1000) - effects.settings.stream_retention * 1000, 0)
    redis = effects.jobs.connection
    redis.xtrim(GLOBAL_STREAM, minid=min_id, approximate=False)
    for key in redis.scan_iter(match=CHANNEL_STREAM_PATTERN, count=1000):
        redis.xtrim(key, minid=min_id, approximate=False)
        if redis.xlen(key) == 0:
            redis.delete(key)


def install_periodic_jobs(jobs: JobQueue, sweep_interval: int) -> None:
    """Register sweep (every SWEEP_INTERVAL) and cleanup with rq-scheduler under fixed ids
    (re-registering replaces them)."""
    for job_id, job, interval in (("bookwire-periodic-sweep", SWEEP, sweep_interval),
                                  ("bookwire-periodic-cleanup", CLEANUP, CLEANUP_INTERVAL_SECONDS)):
        jobs.schedule_periodic(job, job_id=job_id, interval=interval, timeout=600)
