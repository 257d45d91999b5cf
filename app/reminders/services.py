"""Reminders and response deadlines: planned when a booking changes, fired by workers.

A reminder is a row (visible in `GET /v1/bookings/{id}/reminders`) plus an rq-scheduler job whose
id is derived from the row's id. Firing flips the row from `scheduled` to `sent` in one conditional
UPDATE, so however many workers and schedulers run, only one fires it; the job also re-checks
that the booking is still confirmed. A sweep (workers.jobs.sweep) re-enqueues anything due whose
job went missing, so a lost Redis schedule delays a reminder instead of dropping it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from app.bookings.schemas import BookingRead
from app.db.tables import Reminder, Resource
from app.effects import Effects
from app.reminders.schemas import ReminderRead
from workers.queues import expiry_job_id, reminder_job_id

# Changes after which a booking is confirmed with (possibly new) times: plan its reminders afresh.
PLAN_ON = frozenset({"booking.created", "booking.confirmed", "booking.rescheduled"})
# Changes that can take a booking out of `pending` (others leave its expiry job alone).
LEAVE_PENDING_ON = frozenset({"booking.confirmed", "booking.rejected", "booking.cancelled", "booking.expired"})
# Changes after which nothing should be reminded any more.
DROP_ON = frozenset({"booking.cancelled", "booking.checked_in", "booking.completed", "booking.rejected",
                     "booking.expired"})


def to_reminder_read(row: dict[str, Any]) -> ReminderRead:
    return ReminderRead(**{name: row[name] for name in ReminderRead.__struct_fields__})


async def _drop_scheduled(effects: Effects, booking_id: uuid.UUID) -> None:
    rows = await Reminder.select(Reminder.id).where(
        Reminder.booking_id == booking_id, Reminder.status == "scheduled"
    )
    await Reminder.update({Reminder.status: "cancelled"}).where(
        Reminder.booking_id == booking_id, Reminder.status == "scheduled"
    )
    for row in rows:
        await effects.run(effects.jobs.cancel, reminder_job_id(row["id"]))


async def plan_reminders(effects: Effects, booking: BookingRead, event_type: str) -> None:
    """Schedule, move or drop the reminders of `booking` after `event_type`."""
    from workers.jobs import fire_reminder  # the job module imports this one: import at use

    if event_type in DROP_ON or (event_type in PLAN_ON and booking.status == "confirmed"):
        await _drop_scheduled(effects, booking.id)
    if event_type not in PLAN_ON or booking.status != "confirmed":
        return
    now = datetime.now(UTC)
    plan = [(booking.owner_id, "owner", o) for o in effects.settings.reminder_provider_offsets]
    plan += [(booking.customer_id, "customer", o) for o in effects.settings.reminder_customer_offsets]
    for recipient_id, role, offset in plan:
        due_at = booking.starts_at - timedelta(seconds=offset)
        if due_at <= now:
            continue  # that moment has passed: skip it
        reminder_id = uuid.uuid4()
        await Reminder.insert(Reminder(
            id=reminder_id, booking_id=booking.id, recipient_id=recipient_id, recipient_role=role,
            offset_seconds=offset, due_at=due_at, status="scheduled", fired_at=None, created_at=now,
        ))
        await effects.run(effects.jobs.schedule, due_at, fire_reminder, str(reminder_id),
                          job_id=reminder_job_id(reminder_id))


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


async def reminders_of(booking_id: uuid.UUID) -> list[ReminderRead]:
    rows = await Reminder.select().where(Reminder.booking_id == booking_id).order_by(Reminder.due_at)
    return [to_reminder_read(r) for r in rows]
