"""The job entry points: RQ imports them by the names in `app/job_queue.py`. Each gets the worker's
context and calls its area's function; arguments are primitive (ids as strings), and every job is
idempotent, so running it twice — a retry, two workers, a sweep re-enqueueing it — changes nothing
the second time.

- send_email(*delivery_ids): app/email/delivery.py — claim, render, send, record; retry with backoff.
- fire_due_reminders(): app/bookings/reminders.py — every reminder due by now, each at most once.
- expire_booking(booking_id): app/bookings/expiry.py — a pending booking past its deadline expires.
- email_unread(booking_id, user_id): app/conversations/unread.py — the unread-messages email, once.
- sweep(), cleanup(): app/maintenance.py — re-enqueue lost jobs; trim history and old rows.
"""

from __future__ import annotations

from app import maintenance
from app.bookings import expiry, reminders
from app.conversations import unread
from app.email import delivery
from workers import context


@context.job
async def send_email(*delivery_ids: str) -> None:
    """Send email deliveries, one after the other (those of one change share a job). One that
    cannot be recorded (the database is down) does not hold back the others; the job then fails,
    and the sweep re-enqueues whatever is left."""
    failure: Exception | None = None
    for delivery_id in delivery_ids:
        try:
            await delivery.send_delivery(context.current().effects, delivery_id)
        except Exception as exc:
            failure = failure or exc
    if failure is not None:
        raise failure


@context.job
async def fire_due_reminders() -> None:
    """Fire the reminders due by now."""
    await reminders.fire_due_reminders(context.current().effects)


@context.job
async def expire_booking(booking_id: str) -> None:
    """Expire a booking still pending at its response deadline."""
    await expiry.expire_booking(context.current().effects, booking_id)


@context.job
async def email_unread(booking_id: str, user_id: str) -> None:
    """Email a participant the messages they have not read (MESSAGE_EMAIL_DELAY after one came)."""
    await unread.email_unread(context.current().effects, booking_id, user_id)


@context.job
async def sweep() -> None:
    """Re-enqueue what is due but has no job any more."""
    await maintenance.sweep(context.current().effects)


@context.job
async def cleanup() -> None:
    """Trim event history; delete old fired reminders and read notifications."""
    await maintenance.cleanup(context.current().effects)
