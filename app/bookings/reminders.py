"""Reminders and response deadlines: planned when a booking changes, fired by the workers.

A reminder is a row (visible in `GET /v1/bookings/{id}/reminders`). rq-scheduler holds one job per
whole second in which some reminder falls due (the `fire_due_reminders` job, id
`bookwire-reminders-<unix second>`): that job fires every reminder due by the time it runs, so a
thousand reminders in ten seconds are ten jobs, not a thousand. Firing flips rows from `scheduled`
to `sent` in one conditional UPDATE that also requires the booking to be confirmed, so however many
workers and schedulers run, each reminder fires at most once and never for a booking that left
`confirmed`. Dropping a reminder only marks its row: the second's job may serve others, and finds
nothing to do for it. The sweep (app/maintenance.py) fires anything overdue whose job went missing,
so a lost Redis schedule delays a reminder instead of dropping it.

Planning happens inside the booking change's transaction (the rows, and the rq-scheduler jobs as
outbox entries); firing is one transaction too (claim, events, notifications, emails).

A response deadline is one job per booking (`bookwire-expire-<booking id>`, app/bookings/expiry.py),
and one more each time a pooled request moves on; cancelled once the booking leaves `pending`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from app.bookings.emails import booking_context
from app.bookings.events import describe
from app.bookings.parties import parties_of
from app.bookings.schemas import BookingRead, ReminderDue, to_booking_read, to_reminder_read
from app.db.prepared import insert_rows
from app.db.tables import Booking, Reminder, User
from app.effects import Effects
from app.email.services import NewEmail, queue_emails
from app.job_queue import EXPIRE_BOOKING, FIRE_DUE_REMINDERS, REMINDERS_JOB_PREFIX, expiry_job_id
from app.metrics import count_worker_event
from app.notifications.services import NewNotification, notify_each
from app.outbox.change import Change
from app.realtime.events import user_channel
from app.settings import Settings

# Changes after which a booking is confirmed with (possibly new) times: plan its reminders afresh.
PLAN_ON = frozenset({"booking.created", "booking.confirmed", "booking.rescheduled"})
# Changes that can take a booking out of `pending` (others leave its expiry job alone).
LEAVE_PENDING_ON = frozenset({"booking.confirmed", "booking.rejected", "booking.cancelled", "booking.expired"})
# Changes after which nothing should be reminded any more.
DROP_ON = frozenset({"booking.cancelled", "booking.checked_in", "booking.completed", "booking.rejected",
                     "booking.expired"})
REMINDER_BATCH = 100  # reminders one job claims at a time


# ---- planning, after a booking change ---------------------------------------------------------


async def plan_reminders(change: Change, settings: Settings, booking: BookingRead, event_type: str) -> None:
    """Schedule, move or drop the reminders of `booking` after `event_type` (inside the change)."""
    if event_type in DROP_ON or (event_type in PLAN_ON and booking.status == "confirmed"):
        await Reminder.update({Reminder.status: "cancelled"}).where(
            Reminder.booking_id == booking.id, Reminder.status == "scheduled"
        )
    if event_type not in PLAN_ON or booking.status != "confirmed":
        return
    now = datetime.now(UTC)
    plan = [(booking.owner_id, "owner", o) for o in settings.reminder_provider_offsets]
    plan += [(booking.customer_id, "customer", o) for o in settings.reminder_customer_offsets]
    due = [(recipient_id, role, offset, due_at) for recipient_id, role, offset in plan
           if (due_at := booking.starts_at - timedelta(seconds=offset)) > now]  # a moment already past is skipped
    if not due:
        return
    await insert_rows(Reminder, [
        {"id": uuid.uuid4(), "booking_id": booking.id, "recipient_id": recipient_id, "recipient_role": role,
         "offset_seconds": offset, "due_at": due_at, "status": "scheduled", "fired_at": None, "created_at": now}
        for recipient_id, role, offset, due_at in due
    ])
    change.schedule_shared([due_at for *_, due_at in due], FIRE_DUE_REMINDERS, prefix=REMINDERS_JOB_PREFIX)


def plan_deadline(change: Change, booking: BookingRead, event_type: str, deadline_seconds: int | None,
                  offered_at: datetime | None = None) -> None:
    """A pending booking on a resource with a response deadline expires — or, pooled, moves on —
    unless answered in time. `offered_at`: when its current owner was asked, once it has moved on
    (None: when it was created)."""
    if event_type in ("booking.created", "booking.reassigned") and booking.status == "pending":
        if deadline_seconds:
            change.schedule((offered_at or booking.created_at) + timedelta(seconds=deadline_seconds),
                            EXPIRE_BOOKING, str(booking.id), job_id=expiry_job_id(booking.id, offered_at))
    elif event_type in LEAVE_PENDING_ON:  # answered in time: no expiry job any more
        change.cancel(expiry_job_id(booking.id, offered_at))


# ---- firing, in a worker ----------------------------------------------------------------------


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


async def fire_due_reminders(effects: Effects) -> None:
    """Fire the reminders due by now: each a `reminder.due` event, an in-app notification and an
    email — at most once, and only while its booking is confirmed (checked in the claiming UPDATE).

    The claim and everything it produces are one transaction (events and the email's job in its
    outbox): a worker killed at any instant either fired a reminder completely or not at all, and
    the sweep fires what is still due. Takes REMINDER_BATCH at a time; when that many were due, it
    also enqueues another run, so that idle workers share a burst."""
    now = datetime.now(UTC)
    due = [row["id"] for row in await Reminder.select(Reminder.id).where(
        Reminder.status == "scheduled", Reminder.due_at <= now).order_by(Reminder.due_at).limit(REMINDER_BATCH)]
    if not due:
        return
    async with effects.change() as change:
        if len(due) == REMINDER_BATCH:
            change.enqueue(FIRE_DUE_REMINDERS, job_id=f"{REMINDERS_JOB_PREFIX}-more-{uuid.uuid4()}")
        confirmed = Booking.select(Booking.id).where(Booking.status == "confirmed")
        deactivated = User.select(User.id).where(User.active == False)  # noqa: E712
        await Reminder.update({Reminder.status: "cancelled"}).where(
            Reminder.id.is_in(due), Reminder.status == "scheduled",
            Reminder.booking_id.not_in(confirmed) | Reminder.recipient_id.is_in(deactivated))
        fired = await Reminder.update({Reminder.status: "sent", Reminder.fired_at: now}).where(
            Reminder.id.is_in(due), Reminder.status == "scheduled", Reminder.booking_id.is_in(confirmed)
        ).returning(*Reminder.all_columns())  # a reminder another worker claimed a moment ago is not returned
        if fired:
            await _announce_reminders(change, effects.settings, fired, now)
    if fired:
        count_worker_event(effects.jobs.connection, "reminders_fired", len(fired))


async def _announce_reminders(change: Change, settings: Settings, fired: list[dict[str, Any]], now: datetime) -> None:
    booking_rows = await Booking.select().where(Booking.id.is_in(list({r["booking_id"] for r in fired})))
    by_id = {row["id"]: to_booking_read(row) for row in booking_rows}
    parties = await parties_of(list(by_id.values()))
    notifications: list[NewNotification] = []
    emails: list[NewEmail] = []
    for reminder in fired:
        booking = by_id[reminder["booking_id"]]
        resource, people = parties[booking.id]
        role = reminder["recipient_role"]
        when = starts_in((booking.starts_at - now).total_seconds(), reminder["offset_seconds"])
        data = ReminderDue(to_reminder_read(reminder), booking)
        change.publish("reminder.due", [user_channel(reminder["recipient_id"])], data)
        whose = "Your booking" if role == "customer" else f"{people['customer']['name']}'s booking"
        notifications.append(NewNotification(
            reminder["recipient_id"], "reminder.due", f"Reminder: {resource['name']}",
            f"{whose} of {describe(booking, resource)} starts in {when}. Booking {booking.id}.", data))
        email_context = booking_context(booking, resource, people, role, None, settings.app_url)
        email_context["reminder"] = {"offset_seconds": reminder["offset_seconds"], "starts_in": when}
        emails.append(NewEmail(f"reminder.{role}", people[role]["email"], email_context, booking.id))
    await notify_each(change, notifications)
    await queue_emails(change, settings, emails)
