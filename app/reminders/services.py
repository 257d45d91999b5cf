"""Reminders and response deadlines: planned when a booking changes, fired by workers.

A reminder is a row (visible in `GET /v1/bookings/{id}/reminders`). rq-scheduler holds one job per
whole second in which some reminder falls due (`workers.jobs.fire_due_reminders`, id
`bookwire-reminders-<unix second>`): that job fires every reminder due by the time it runs, so a
thousand reminders in ten seconds are ten jobs, not a thousand. Firing flips rows from `scheduled`
to `sent` in one conditional UPDATE that also requires the booking to be confirmed, so however many
workers and schedulers run, each reminder fires at most once and never for a booking that left
`confirmed`. Dropping a reminder only marks its row: the second's job may serve others, and finds
nothing to do for it. A sweep (workers.jobs.sweep) fires anything overdue whose job went missing,
so a lost Redis schedule delays a reminder instead of dropping it.

A response deadline is one job per booking (`bookwire-expire-<booking id>`), cancelled once the
booking leaves `pending`.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from app.bookings.schemas import BookingRead
from app.db.tables import Reminder, Resource
from app.effects import Effects
from app.reminders.schemas import ReminderRead
from workers.queues import REMINDERS_JOB_PREFIX, expiry_job_id

# Changes after which a booking is confirmed with (possibly new) times: plan its reminders afresh.
PLAN_ON = frozenset({"booking.created", "booking.confirmed", "booking.rescheduled"})
# Changes that can take a booking out of `pending` (others leave its expiry job alone).
LEAVE_PENDING_ON = frozenset({"booking.confirmed", "booking.rejected", "booking.cancelled", "booking.expired"})
# Changes after which nothing should be reminded any more.
DROP_ON = frozenset({"booking.cancelled", "booking.checked_in", "booking.completed", "booking.rejected",
                     "booking.expired"})


def to_reminder_read(row: dict[str, Any]) -> ReminderRead:
    return ReminderRead(**{name: row[name] for name in ReminderRead.__struct_fields__})


async def plan_reminders(effects: Effects, booking: BookingRead, event_type: str) -> None:
    """Schedule, move or drop the reminders of `booking` after `event_type`."""
    from workers.jobs import fire_due_reminders  # the job module imports this one: import at use

    if event_type in DROP_ON or (event_type in PLAN_ON and booking.status == "confirmed"):
        await Reminder.update({Reminder.status: "cancelled"}).where(
            Reminder.booking_id == booking.id, Reminder.status == "scheduled"
        )
    if event_type not in PLAN_ON or booking.status != "confirmed":
        return
    now = datetime.now(UTC)
    plan = [(booking.owner_id, "owner", o) for o in effects.settings.reminder_provider_offsets]
    plan += [(booking.customer_id, "customer", o) for o in effects.settings.reminder_customer_offsets]
    due = [(recipient_id, role, offset, due_at) for recipient_id, role, offset in plan
           if (due_at := booking.starts_at - timedelta(seconds=offset)) > now]  # a moment already past is skipped
    if not due:
        return
    await Reminder.insert(*(
        Reminder(id=uuid.uuid4(), booking_id=booking.id, recipient_id=recipient_id, recipient_role=role,
                 offset_seconds=offset, due_at=due_at, status="scheduled", fired_at=None, created_at=now)
        for recipient_id, role, offset, due_at in due
    ))
    await effects.run(effects.jobs.schedule_shared, [due_at for *_, due_at in due], fire_due_reminders,
                      prefix=REMINDERS_JOB_PREFIX)


async def plan_deadline(effects: Effects, booking: BookingRead, event_type: str) -> None:
    """A new pending booking on a resource with a response deadline expires unless answered in time."""
    from workers.jobs import expire_booking

    if event_type == "booking.created" and booking.status == "pending":
        resource = await Resource.select(Resource.response_deadline_seconds).where(
            Resource.id == booking.resource_id
        ).first()
        seconds = resource["response_deadline_seconds"] if resource else None
        if seconds:
            await effects.run(effects.jobs.schedule, booking.created_at + timedelta(seconds=seconds),
                              expire_booking, str(booking.id), job_id=expiry_job_id(booking.id))
    elif event_type in LEAVE_PENDING_ON:  # answered in time: no expiry job any more
        await effects.run(effects.jobs.cancel, expiry_job_id(booking.id))
