"""What the email worker refuses to send, and what it says (issue 7 items 1, 2, 4 and 5).

Real processes, as in test_email_workers.py (whose stack, SMTP sink and helpers these tests reuse):
a `bookwire api` on SQLite, `bookwire worker` (and `bookwire scheduler` for reminders) on a Redis of
the module's own, and an aiosmtpd sink that records each transfer's envelope.

- every booking email has exactly one envelope recipient, its delivery's address; the owner's
  `booking.created` subject asks for a confirmation only when the booking is pending;
- an address stored before addresses were checked (`a@x, b@y`) fails at once: one attempt, no
  retries, and the sink never sees it; so does a hostile template stored before templates were
  bounded;
- a deactivated owner gets no email and no reminder: their queued delivery ends `failed` saying
  why, their reminder is cancelled, a later change queues nothing for them — the customer still
  gets everything;
- a reminder says its own offset ("starts in 8 seconds"), not the time left when it ran.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import test_email_workers as email_workers
from conftest import Actor, execute_sql, make_resource
from test_email_workers import Stack, Story, deliveries, eventually, open_shop

# Its fixtures, offered to this module by name: a fresh Redis and data folder per test, stopped after.
module_redis = email_workers.module_redis
stack = email_workers.stack

# 1 s, 2 s, 4 s between attempts (test_email_workers.RETRY_INTERVALS): a retry would show within seconds.
NO_RETRY_WATCH_SECONDS = 4.0
PROVIDER_OFFSET, CUSTOMER_OFFSET = 8, 7


def book_at(customer: Actor, resource_id: str, starts_at: datetime) -> dict[str, Any]:
    answer = customer.http.post("/v1/bookings", json={
        "resource_id": resource_id, "starts_at": starts_at.isoformat(),
        "ends_at": (starts_at + timedelta(hours=1)).isoformat()})
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result


def by_key(admin: Actor, booking_id: str) -> dict[str, dict[str, Any]]:
    return {d["template_key"]: d for d in deliveries(admin, booking_id)}


def settled_keys(admin: Actor, booking_id: str, expected: dict[str, str]) -> Any:
    """A check for `eventually`: the booking's deliveries once each key has its expected status."""
    def check() -> dict[str, dict[str, Any]] | None:
        found = by_key(admin, booking_id)
        done = set(found) == set(expected) and all(found[k]["status"] == s for k, s in expected.items())
        return found if done else None
    return check


def reminders(admin: Actor, booking_id: str) -> list[dict[str, Any]]:
    answer = admin.http.get(f"/v1/bookings/{booking_id}/reminders")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    items: list[dict[str, Any]] = body["items"] if isinstance(body, dict) else body
    return items


def inbox(actor: Actor, booking_id: str, kind: str) -> list[dict[str, Any]]:
    answer = actor.http.get("/v1/notifications", params={"limit": 200})
    assert answer.status_code == 200, answer.text
    return [n for n in answer.json()["items"] if n["type"] == kind and booking_id in n["body"]]


def soon(seconds: int) -> datetime:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0)


def test_each_email_has_one_envelope_recipient_and_the_owner_subject_follows_the_status(stack: Stack) -> None:
    sink = stack.sink()
    settings = stack.settings(sink)
    story = open_shop(stack, settings)
    instant = make_resource(story.owner, name="Instant Room", requires_confirmation=False)
    stack.start("worker", settings, "worker.log")
    pending = book_at(story.customer, story.resource["id"], soon(3600 * 30))
    confirmed = book_at(story.customer, instant["id"], soon(3600 * 30))
    expected = {"booking.created.customer": "sent", "booking.created.owner": "sent"}
    sent = {b["id"]: eventually(settled_keys(story.admin, b["id"], expected), 30, "the emails sent", stack)
            for b in (pending, confirmed)}

    transfers = {t.message_id: t for t in sink.handler.accepted()}
    for items in sent.values():
        for key, delivery in items.items():
            transfer = transfers[delivery["message_id"]]
            address = story.owner.email if key.endswith(".owner") else story.customer.email
            assert transfer.rcpt_tos == [address], (key, transfer.rcpt_tos)
    asking = transfers[sent[pending["id"]]["booking.created.owner"]["message_id"]].message()["Subject"]
    telling = transfers[sent[confirmed["id"]]["booking.created.owner"]["message_id"]].message()["Subject"]
    assert "request" in asking and "confirm" in asking, asking
    assert "request" not in telling and "confirmed" in telling, telling


def test_a_stored_address_that_is_not_one_plain_address_fails_at_once_and_reaches_no_one(stack: Stack) -> None:
    sink = stack.sink()
    settings = stack.settings(sink)
    story = open_shop(stack, settings)
    bad = f"{story.customer.email}, attacker@evil.example"  # as registration let it in before the fix
    execute_sql(stack.database_url, "UPDATE users SET email = $1 WHERE id = $2", bad, story.customer.id)
    stack.start("worker", settings, "worker.log")
    booking = book_at(story.customer, story.resource["id"], soon(3600 * 30))

    found = eventually(settled_keys(story.admin, booking["id"], {
        "booking.created.customer": "failed", "booking.created.owner": "sent"}), 30, "the deliveries settled", stack)
    time.sleep(NO_RETRY_WATCH_SECONDS)
    failed = by_key(story.admin, booking["id"])["booking.created.customer"]
    assert failed["status"] == "failed" and failed["attempts"] == 1, failed
    assert "not a single plain email address" in (failed["last_error"] or ""), failed
    assert all(len(t.rcpt_tos) == 1 for t in sink.handler.snapshot()), [t.rcpt_tos for t in sink.handler.snapshot()]
    assert not [t for t in sink.handler.snapshot() if "evil.example" in " ".join(t.rcpt_tos)]
    assert [t.message_id for t in sink.handler.snapshot()] == [found["booking.created.owner"]["message_id"]]


def test_a_hostile_template_stored_before_the_fix_fails_its_delivery_at_once(stack: Stack) -> None:
    sink = stack.sink()
    settings = stack.settings(sink)
    story = open_shop(stack, settings)
    key = "booking.created.customer"
    good = {"subject": "Hi", "text": "{{ booking.id }}", "html": "<p>{{ link }}</p>"}
    assert story.admin.http.put(f"/v1/admin/email-templates/{key}", json=good).status_code == 200
    slow = "{% for i in range(20000) %}{% for j in range(20000) %}{% endfor %}{% endfor %}"
    execute_sql(stack.database_url, "UPDATE email_templates SET text = $1 WHERE key = $2", slow, key)
    stack.start("worker", settings, "worker.log")
    booking = book_at(story.customer, story.resource["id"], soon(3600 * 30))

    eventually(settled_keys(story.admin, booking["id"], {key: "failed", "booking.created.owner": "sent"}), 30,
               "the deliveries settled", stack)
    time.sleep(NO_RETRY_WATCH_SECONDS)
    failed = by_key(story.admin, booking["id"])[key]
    assert failed["status"] == "failed" and failed["attempts"] == 1, failed
    assert "too long" in (failed["last_error"] or ""), failed
    assert len(sink.handler.accepted()) == 1


def test_a_deactivated_owner_gets_no_email_and_no_reminder(stack: Stack) -> None:
    sink = stack.sink()
    settings = stack.settings(sink, REMINDER_PROVIDER_OFFSETS=f"{PROVIDER_OFFSET}s",
                              REMINDER_CUSTOMER_OFFSETS=f"{CUSTOMER_OFFSET}s")
    story: Story = open_shop(stack, settings)
    instant = make_resource(story.owner, name="Instant Room", requires_confirmation=False)
    # No worker yet: the booking's emails wait in the queue, its reminders in the scheduler.
    booking = book_at(story.customer, instant["id"], soon(PROVIDER_OFFSET + 6))
    assert booking["status"] == "confirmed", booking
    assert {r["recipient_role"] for r in reminders(story.admin, booking["id"])} == {"owner", "customer"}
    answer = story.admin.http.patch(f"/v1/users/{story.owner.id}", json={"active": False})
    assert answer.status_code == 200, answer.text
    stack.start("worker", settings, "worker.log")
    stack.start("scheduler", settings, "scheduler.log")

    def reminded() -> list[dict[str, Any]] | None:
        found = reminders(story.admin, booking["id"])
        return found if all(r["status"] != "scheduled" for r in found) else None

    fired = {r["recipient_role"]: r for r in eventually(reminded, 40, "both reminders settled", stack)}
    assert fired["owner"]["status"] == "cancelled" and fired["customer"]["status"] == "sent", fired
    cancelled = story.customer.http.post(f"/v1/bookings/{booking['id']}/cancel", json={})
    assert cancelled.status_code == 200, cancelled.text
    found = eventually(settled_keys(story.admin, booking["id"], {
        "booking.created.customer": "sent", "booking.created.owner": "failed", "reminder.customer": "sent",
        "booking.cancelled.customer": "sent"}), 30, "the deliveries settled", stack)
    owner_delivery = found["booking.created.owner"]
    assert owner_delivery["attempts"] == 1 and "deactivated" in (owner_delivery["last_error"] or ""), owner_delivery
    assert not [t for t in sink.handler.snapshot() if story.owner.email in t.rcpt_tos]


def test_a_reminder_says_its_own_offset(stack: Stack) -> None:
    sink = stack.sink()
    settings = stack.settings(sink, REMINDER_PROVIDER_OFFSETS=f"{PROVIDER_OFFSET}s",
                              REMINDER_CUSTOMER_OFFSETS=f"{CUSTOMER_OFFSET}s")
    story = open_shop(stack, settings)
    instant = make_resource(story.owner, name="Instant Room", requires_confirmation=False)
    stack.start("worker", settings, "worker.log")
    stack.start("scheduler", settings, "scheduler.log")
    booking = book_at(story.customer, instant["id"], soon(PROVIDER_OFFSET + 4))

    for actor, offset, whose in ((story.owner, PROVIDER_OFFSET, "Carol Customer's booking of Instant Room on"),
                                 (story.customer, CUSTOMER_OFFSET, "Your booking of Instant Room on")):
        notice = eventually(lambda a=actor: inbox(a, booking["id"], "reminder.due"), 30, "the reminder", stack)[0]
        assert notice["body"].startswith(whose), notice
        assert f"starts in {offset} seconds." in notice["body"], notice
    found = eventually(settled_keys(story.admin, booking["id"], {
        "booking.created.customer": "sent", "booking.created.owner": "sent", "reminder.owner": "sent",
        "reminder.customer": "sent"}), 30, "the reminder emails sent", stack)
    subject = sink.handler.accepted(found["reminder.customer"]["message_id"])[0].message()["Subject"]
    assert f"{CUSTOMER_OFFSET} seconds" in subject, subject
