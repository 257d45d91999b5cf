"""The job functions. Arguments are primitive (ids as strings); every job is idempotent, so running
it twice — a retry, two workers, a sweep re-enqueueing it — changes nothing the second time.

- send_email(delivery_id): claim the delivery, render, send, record; retry with backoff.
- fire_due_reminders(): every reminder due by now, each at most once, only for a still-confirmed booking.
- expire_booking(booking_id): a pending booking past its response deadline becomes expired.
- sweep(): re-enqueue work whose job went missing (a killed worker, a Redis that lost its schedule).
- cleanup(): trim event history past retention, delete old fired reminders and read notifications.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from app.bookings import services as bookings
from app.bookings.events import describe
from app.bookings.parties import parties_of
from app.db.tables import Booking, EmailDelivery, Notification, Reminder, Resource, User
from app.email.services import NewEmail, booking_context, effective_template, queue_emails
from app.errors import Conflict
from app.metrics import STATS_KEY
from app.notifications.services import NewNotification, notify_each
from app.realtime.bus import CHANNEL_STREAM_PATTERN, GLOBAL_STREAM
from app.realtime.events import role_channel, user_channel
from app.reminders.services import to_reminder_read
from workers import context
from workers.email import TemplateProblem, Undeliverable, build_message, check_recipient, deliver, render
from workers.queues import EMAIL_QUEUE, REMINDERS_JOB_PREFIX, email_job_id, expiry_job_id

log = logging.getLogger(__name__)

SWEEP_INTERVAL_SECONDS = 10
CLEANUP_INTERVAL_SECONDS = 3600
KEEP_DAYS = 30
REMINDER_BATCH = 100  # reminders one job claims at a time


def _count(name: str, amount: int = 1) -> None:
    context.current().jobs.connection.hincrby(STATS_KEY, name, amount)


class RecipientDeactivated(Undeliverable):
    """The delivery's recipient is a deactivated account: it ends `failed`, quietly (no alert)."""


def _human(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n} {unit}{'s' if n != 1 else ''}" for n, unit in ((hours, "hour"), (minutes, "minute"),
                                                                    (secs, "second")) if n]
    return " ".join(parts) or "0 seconds"


def starts_in(remaining: float, offset_seconds: int) -> str:
    """How long until a booking starts, as a reminder should say it.

    A reminder runs a moment after its due time, so the exact time left reads "59 seconds" for a
    1-minute reminder: on time (within a tenth of the offset, at least 2 s), it says its own offset.
    Late (a worker was down), it says the time left rounded to a unit people use."""
    if 0 <= offset_seconds - remaining <= max(2.0, offset_seconds / 10):
        return _human(offset_seconds)
    if remaining < 1:
        return "a moment"
    unit = 1 if remaining < 60 else 60 if remaining < 86400 else 3600
    return _human(max(unit, round(remaining / unit) * unit))


@context.job
async def send_email(delivery_id: str) -> None:
    """Send one delivery, exactly once as far as Bookwire can tell (see `_claim`)."""
    ctx = context.current()
    settings = ctx.settings
    row = await _claim(uuid.UUID(delivery_id), settings.email_send_timeout)
    if row is None:
        return  # sent, failed for good, or being sent by someone else right now
    try:
        check_recipient(row["to_address"])  # a malformed address stored before addresses were checked
        if await User.exists().where(User.email == row["to_address"].lower(), User.active == False):  # noqa: E712
            raise RecipientDeactivated(f"{row['to_address']} belongs to a deactivated account; not sent")
        # Blocks this worker's loop for at most the sandbox's time limit; nothing else runs on it meanwhile.
        rendered = render(await effective_template(row["template_key"]), msgspec.json.decode(row["context"]))
        deliver(settings, build_message(settings, row["to_address"], rendered, row["message_id"]), delivery_id,
                row["to_address"])
    except Exception as exc:  # SMTP refused or down, template broken since it was queued, ...
        await _failed_attempt(row, exc)
        return
    now = datetime.now(UTC)
    await EmailDelivery.update({"status": "sent", "sent_at": now, "updated_at": now, "last_error": None,
                                "claimed_until": None}).where(EmailDelivery.id == row["id"])
    _count("emails_sent")


async def _claim(delivery_id: uuid.UUID, send_timeout: int) -> dict[str, Any] | None:
    """Mark the delivery `sending` for one attempt, unless it is sent, failed, or claimed by a live
    attempt. A claim expires after the send timeout, so a worker killed mid-send is retried — once
    the SMTP conversation it was in can no longer complete."""
    now = datetime.now(UTC)
    claimable = (EmailDelivery.status == "queued") | (
        (EmailDelivery.status == "sending") & (EmailDelivery.claimed_until < now)
    )
    rows = await EmailDelivery.update({
        EmailDelivery.status: "sending", EmailDelivery.attempts: EmailDelivery.attempts + 1,
        EmailDelivery.claimed_until: now + timedelta(seconds=send_timeout + 5), EmailDelivery.updated_at: now,
    }).where(EmailDelivery.id == delivery_id, claimable).returning(*EmailDelivery.all_columns())
    return rows[0] if rows else None


async def _failed_attempt(row: dict[str, Any], exc: Exception) -> None:
    ctx = context.current()
    intervals = ctx.settings.email_retry_intervals
    attempt = row["attempts"]
    error = f"{type(exc).__name__}: {exc}"[:2000]
    now = datetime.now(UTC)
    # No retry can fix a broken template or a recipient that cannot or must not be mailed.
    give_up = attempt > len(intervals) or isinstance(exc, TemplateProblem | Undeliverable)
    await EmailDelivery.update({"status": "failed" if give_up else "queued", "last_error": error,
                                "updated_at": now, "claimed_until": None}).where(EmailDelivery.id == row["id"])
    if isinstance(exc, RecipientDeactivated):
        _count("emails_failed")
        log.info("email %s not sent: %s", row["id"], error)  # by design: nothing for an admin to do
        return
    if give_up:
        _count("emails_failed")
        log.error("email %s to %s failed for good after %d attempts: %s", row["id"], row["to_address"], attempt,
                  error)
        await ctx.effects.bus.publish("system.alert", [role_channel("admin")], {
            "kind": "email_failed", "delivery_id": str(row["id"]), "to": row["to_address"],
            "template_key": row["template_key"], "attempts": attempt, "error": error,
        })
        return
    delay = intervals[attempt - 1]
    log.warning("email %s attempt %d failed (%s); retrying in %d s", row["id"], attempt, error, delay)
    ctx.jobs.schedule(now + timedelta(seconds=delay), send_email, str(row["id"]),
                      job_id=email_job_id(row["id"], attempt + 1), queue=EMAIL_QUEUE)


@context.job
async def fire_due_reminders() -> None:
    """Fire the reminders due by now: each a `reminder.due` event, an in-app notification and an
    email — at most once, and only while its booking is confirmed (checked in the claiming UPDATE).

    Takes REMINDER_BATCH at a time; when that many were due, it first enqueues another run, so that
    idle workers share a burst while this one announces its batch."""
    ctx = context.current()
    now = datetime.now(UTC)
    due = [row["id"] for row in await Reminder.select(Reminder.id).where(
        Reminder.status == "scheduled", Reminder.due_at <= now).order_by(Reminder.due_at).limit(REMINDER_BATCH)]
    if not due:
        return
    if len(due) == REMINDER_BATCH:
        ctx.jobs.enqueue(fire_due_reminders, job_id=f"{REMINDERS_JOB_PREFIX}-more-{uuid.uuid4()}")
    confirmed = Booking.select(Booking.id).where(Booking.status == "confirmed")
    deactivated = User.select(User.id).where(User.active == False)  # noqa: E712
    await Reminder.update({Reminder.status: "cancelled"}).where(
        Reminder.id.is_in(due), Reminder.status == "scheduled",
        Reminder.booking_id.not_in(confirmed) | Reminder.recipient_id.is_in(deactivated))
    fired = await Reminder.update({Reminder.status: "sent", Reminder.fired_at: now}).where(
        Reminder.id.is_in(due), Reminder.status == "scheduled", Reminder.booking_id.is_in(confirmed)
    ).returning(*Reminder.all_columns())  # a reminder another worker claimed a moment ago is not returned
    if fired:
        await _announce_reminders(fired, now)
        _count("reminders_fired", len(fired))


async def _announce_reminders(fired: list[dict[str, Any]], now: datetime) -> None:
    ctx = context.current()
    booking_rows = await Booking.select().where(Booking.id.is_in(list({r["booking_id"] for r in fired})))
    by_id = {row["id"]: bookings.to_booking_read(row) for row in booking_rows}
    parties = await parties_of(list(by_id.values()))
    announced: list[tuple[str, dict[str, Any]]] = []
    notifications: list[NewNotification] = []
    emails: list[NewEmail] = []
    for reminder in fired:
        booking = by_id[reminder["booking_id"]]
        resource, people = parties[booking.id]
        role = reminder["recipient_role"]
        when = starts_in((booking.starts_at - now).total_seconds(), reminder["offset_seconds"])
        data = {"reminder": to_reminder_read(reminder), "booking": booking}
        announced.append((user_channel(reminder["recipient_id"]), data))
        whose = "Your booking" if role == "customer" else f"{people['customer']['name']}'s booking"
        notifications.append(NewNotification(
            reminder["recipient_id"], "reminder.due", f"Reminder: {resource['name']}",
            f"{whose} of {describe(booking, resource)} starts in {when}. Booking {booking.id}.", data))
        email_context = booking_context(booking, resource, people, role, None, ctx.settings.app_url)
        email_context["reminder"] = {"offset_seconds": reminder["offset_seconds"], "starts_in": when}
        emails.append(NewEmail(f"reminder.{role}", people[role]["email"], email_context, booking.id))
    for channel, data in announced:
        await ctx.effects.bus.publish("reminder.due", [channel], data)
    await notify_each(ctx.effects.bus, notifications)
    await queue_emails(ctx.effects, emails)


@context.job
async def expire_booking(booking_id: str) -> None:
    """Expire a booking still pending at its response deadline (re-checked here, under the lock)."""
    ctx = context.current()
    row = await Booking.select(Booking.status, Booking.created_at, Booking.resource_id).where(
        Booking.id == uuid.UUID(booking_id)).first()
    if row is None or row["status"] != "pending":
        return
    resource = await Resource.select(Resource.response_deadline_seconds).where(
        Resource.id == row["resource_id"]).first()
    seconds = resource["response_deadline_seconds"] if resource else None
    if not seconds or row["created_at"] + timedelta(seconds=seconds) > datetime.now(UTC) + timedelta(seconds=1):
        return  # no deadline any more, or not yet (the sweep comes back)
    try:
        await bookings.transition(None, uuid.UUID(booking_id), "expire", None, ctx.effects)
    except Conflict:
        pass  # confirmed, rejected or cancelled in the meantime


@context.job
async def sweep() -> None:
    """Re-enqueue what is due but has no job any more; every job it touches is idempotent."""
    ctx = context.current()
    now = datetime.now(UTC)
    late = now - timedelta(seconds=3)
    if await Reminder.exists().where(Reminder.status == "scheduled", Reminder.due_at < late):
        ctx.jobs.enqueue(fire_due_reminders, job_id=f"{REMINDERS_JOB_PREFIX}-sweep")
    # A queued delivery waits at most the longest retry interval for its job; past that, the job is lost.
    forgotten = now - timedelta(seconds=max(ctx.settings.email_retry_intervals or (0,)) + 30)
    waiting = await EmailDelivery.select(EmailDelivery.id, EmailDelivery.attempts).where(
        ((EmailDelivery.status == "sending") & (EmailDelivery.claimed_until < now))
        | ((EmailDelivery.status == "queued") & (EmailDelivery.updated_at < forgotten))
    )
    for row in waiting:
        ctx.jobs.enqueue(send_email, str(row["id"]), job_id=email_job_id(row["id"], row["attempts"]) + "-sweep",
                         queue=EMAIL_QUEUE)
    deadline: Any = Booking.resource_id.response_deadline_seconds  # a column of the joined resource
    pending = await Booking.select(Booking.id, Booking.created_at, deadline.as_alias("deadline")).where(
        Booking.status == "pending", deadline.is_not_null()
    )
    for row in pending:
        seconds = row["deadline"]
        if seconds and row["created_at"] + timedelta(seconds=seconds) < late:
            ctx.jobs.enqueue(expire_booking, str(row["id"]), job_id=expiry_job_id(row["id"]) + "-sweep")


@context.job
async def cleanup() -> None:
    """Trim event history past retention; delete fired reminders and read notifications > 30 days old."""
    ctx = context.current()
    cutoff = datetime.now(UTC) - timedelta(days=KEEP_DAYS)
    await Reminder.delete().where(Reminder.status != "scheduled", Reminder.due_at < cutoff)
    await Notification.delete().where(Notification.read_at.is_not_null(), Notification.read_at < cutoff)
    min_id = max(int(datetime.now(UTC).timestamp() * 1000) - ctx.settings.stream_retention * 1000, 0)
    redis = ctx.jobs.connection
    redis.xtrim(GLOBAL_STREAM, minid=min_id, approximate=False)
    for key in redis.scan_iter(match=CHANNEL_STREAM_PATTERN, count=1000):
        redis.xtrim(key, minid=min_id, approximate=False)
        if redis.xlen(key) == 0:
            redis.delete(key)


def install_periodic_jobs(jobs: Any) -> None:
    """Register sweep and cleanup with rq-scheduler under fixed ids (re-registering replaces them)."""
    scheduler = jobs.scheduler
    for job_id, func, interval in (("bookwire-periodic-sweep", sweep, SWEEP_INTERVAL_SECONDS),
                                   ("bookwire-periodic-cleanup", cleanup, CLEANUP_INTERVAL_SECONDS)):
        jobs.cancel(job_id)
        scheduler.schedule(scheduled_time=datetime.now(UTC), func=func, interval=interval, repeat=None, id=job_id,
                           timeout=600, result_ttl=600)

