"""Duplicates are bounded: at most one resend per email, only after an attempt that may have
delivered it unbeknown to Bookwire, always with the same Message-ID (app/email/delivery.py).

Real processes, as in test_email_workers.py (whose stack, SMTP sink and helpers these tests reuse):
a `bookwire api` on SQLite, a `bookwire worker` and a `bookwire scheduler` on a Redis of the
module's own, and an aiosmtpd sink on 127.0.0.1 recording every message that crossed the wire
(end of DATA) whatever it then answered. A transfer the sink recorded is a message the server
"took": a real MTA may already have committed it, so every recorded transfer counts as a copy.

- A server that takes the message and then sits on its reply past EMAIL_SEND_TIMEOUT: the worker
  sends it again once, then gives up (`failed`, an error saying it may have been delivered, one
  `system.alert` to `role:admin`), although EMAIL_RETRY_INTERVALS would allow three more tries.
- A worker SIGKILLed while the server sits on its reply: the claim expires, the sweep re-enqueues
  it, a new worker sends it once more — same Message-ID — and it ends `sent`; that expired claim
  counted as an uncertain attempt.
- A server that refuses (451 to DATA, i.e. after the message was transmitted) twice and then
  accepts: retried as usual, one accepted copy, `sent` on the third attempt — a failure the server
  reported is certain, not counted towards the bound.
- Jobs that ask for a delivery before its retry is due make no attempt.

Every wait is bounded; every process and the sink are stopped by the `stack` fixture.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections import Counter
from typing import Any

import test_email_workers as email_workers
from conftest import Actor
from events import events_since, poll_cursor
from redis import Redis
from test_email_workers import (
    SinkHandler,
    Stack,
    Story,
    Transfer,
    book,
    deliveries,
    eventually,
    open_shop,
    sigkill_tree,
)

from app.job_queue import EMAIL_QUEUE, SEND_EMAIL, JobQueue

# Its fixtures, offered to this module by name: a fresh Redis and data folder per test, stopped after.
module_redis = email_workers.module_redis
stack = email_workers.stack

SEND_TIMEOUT = 2  # EMAIL_SEND_TIMEOUT (s): smtplib's timeout, and a claim lives SEND_TIMEOUT + 5 s
CLAIM_SECONDS = SEND_TIMEOUT + 5
RETRY_INTERVALS = "1s,1s,1s,1s"  # five attempts allowed: only the bound can stop a send at two
SLOW_REPLY = 4.0  # the sink's wait before answering DATA, past SEND_TIMEOUT
CREATED = ("booking.created.customer", "booking.created.owner")  # the emails of a new booking
DONE = {"sent", "failed"}
QUIET_SECONDS = 3.5  # watched after a delivery settles: an interval, the scheduler's poll, a transfer
MAY_HAVE_BEEN_DELIVERED = re.compile(r"may\s*(?:be|have)?\s*(?:been\s*)?deliver", re.IGNORECASE)


def email_settings(stack: Stack, handler: SinkHandler) -> dict[str, str]:
    """Settings of every process: the sink listening, a short send timeout, short retry intervals."""
    return stack.settings(stack.sink(handler), EMAIL_SEND_TIMEOUT=f"{SEND_TIMEOUT}s",
                          EMAIL_RETRY_INTERVALS=RETRY_INTERVALS)


def settle(stack: Stack, admin: Actor, booking_id: str, status: str, timeout: float) -> dict[str, dict[str, Any]]:
    """The booking's two `booking.created` deliveries by template key, once both are done (sent or
    failed) and QUIET_SECONDS more have passed; each must have ended `status`."""

    def done() -> dict[str, dict[str, Any]] | None:
        found = {d["template_key"]: d for d in deliveries(admin, booking_id)}
        return found if set(found) == set(CREATED) and all(d["status"] in DONE for d in found.values()) else None

    eventually(done, timeout, "both deliveries sent or failed", stack)
    time.sleep(QUIET_SECONDS)  # a stray attempt would reach the sink, or change a status, by now
    items = {d["template_key"]: d for d in deliveries(admin, booking_id)}
    for key, delivery in items.items():
        assert delivery["status"] == status, f"{key} is {delivery['status']}, expected {status}: {delivery}"
    return items


def copies_by_message_id(handler: SinkHandler, items: dict[str, dict[str, Any]]) -> dict[str, list[Transfer]]:
    """Every transfer the sink saw, by template key; none may carry a Message-ID of its own."""
    keys = {d["message_id"]: key for key, d in items.items()}
    transfers = handler.snapshot()
    strays = [t.message_id for t in transfers if t.message_id not in keys]
    assert not strays, f"a copy with a Message-ID that is not its delivery's: {strays}"
    found: dict[str, list[Transfer]] = {key: [] for key in items}
    for transfer in transfers:
        found[keys[transfer.message_id]].append(transfer)
    return found


def show(transfers: list[Transfer]) -> list[str]:
    """Transfers as failure messages want them: Message-ID, outcome, seconds after the first."""
    start = transfers[0].at if transfers else 0.0
    return [f"{t.message_id} {t.outcome} +{t.at - start:.1f}s" for t in transfers]


def uncertain_attempts(stack: Stack, delivery_id: str) -> int:
    """`email_deliveries.uncertain_attempts` (internal: the admin view does not show it), read-only."""
    path = stack.database_url.removeprefix("sqlite:///")
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        rows = connection.execute("SELECT id, uncertain_attempts FROM email_deliveries").fetchall()
    finally:
        connection.close()
    counts = {str(row_id).replace("-", "").lower(): count for row_id, count in rows}
    count: int = counts[delivery_id.replace("-", "").lower()]
    return count


def alerts_for(events: list[dict[str, Any]], delivery_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "system.alert" and e["data"].get("delivery_id") == delivery_id]


def test_slow_smtp_reply_is_resent_at_most_once(stack: Stack) -> None:
    """The sink takes every message and answers only after SLOW_REPLY > EMAIL_SEND_TIMEOUT: each
    attempt ends in a timeout after the message went out. Without the bound each email would be
    transmitted five times (once per attempt EMAIL_RETRY_INTERVALS allows) and end failed after 5."""
    handler = SinkHandler(stall=lambda attempt: SLOW_REPLY)
    settings = email_settings(stack, handler)
    story: Story = open_shop(stack, settings)
    cursor = poll_cursor(story.admin)
    stack.start("scheduler", settings, "scheduler.log")
    stack.start("worker", settings, "worker.log")
    booking = book(story.customer, story.resource["id"], 30)

    items = settle(stack, story.admin, booking["id"], "failed", 45)
    copies = copies_by_message_id(handler, items)
    events = events_since(story.admin, cursor, story.admin)
    for key, delivery in items.items():
        sent = copies[key]
        assert len(sent) == 2, f"{key}: transmitted {len(sent)} times, at most one resend allowed: {show(sent)}"
        assert not [t for t in sent if t.accepted], f"{key}: the sink answered before the client gave up: {show(sent)}"
        assert delivery["attempts"] == 2, delivery
        assert MAY_HAVE_BEEN_DELIVERED.search(delivery["last_error"] or ""), (
            f"{key}: last_error does not say it may have been delivered: {delivery['last_error']!r}")
        assert uncertain_attempts(stack, delivery["id"]) == 2, delivery
        alerts = alerts_for(events, delivery["id"])
        assert len(alerts) == 1, f"{key}: {len(alerts)} system.alert events, one expected: {events}"
        assert alerts[0]["channel"] == "role:admin" and alerts[0]["data"]["kind"] == "email_failed", alerts


def test_worker_killed_after_the_server_took_the_message_resends_once(stack: Stack) -> None:
    """The very first message is taken and its reply held; the worker is SIGKILLed meanwhile, so no
    outcome is ever recorded. The claim expires (CLAIM_SECONDS), the sweep re-enqueues it, a new
    worker sends it again — answered at once — and records `sent`. That expired claim is an
    uncertain attempt: had it not been counted, a second uncertain attempt would be followed by a
    third transmission (test_slow_smtp_reply_is_resent_at_most_once shows the other half)."""
    held = threading.Event()

    def stall(attempt: int) -> float:
        if held.is_set():
            return 0.0
        held.set()
        return 3.0  # past SEND_TIMEOUT: only the kill can end the first conversation early

    handler = SinkHandler(stall=stall)
    settings = {**email_settings(stack, handler), "SWEEP_INTERVAL": "2s"}  # the resend sooner than every 10 s
    story = open_shop(stack, settings)
    stack.start("scheduler", settings, "scheduler.log")
    worker = stack.start("worker", settings, "worker.log")
    booking = book(story.customer, story.resource["id"], 30)
    assert handler.stalling.wait(timeout=20), f"no message reached the sink\n{stack.logs()}"
    sigkill_tree(worker)
    first = handler.snapshot()[0]
    eventually(lambda: first.outcome == "abandoned", 5, "the sink seeing the killed client go", stack)
    assert first.ended - first.at < 1.5, f"the client left on its own, not because it was killed: {show([first])}"
    stack.start("worker", settings, "worker-2.log")

    items = settle(stack, story.admin, booking["id"], "sent", 40)
    copies = copies_by_message_id(handler, items)
    killed = next(key for key, d in items.items() if d["message_id"] == first.message_id)
    resent = copies[killed]
    assert [t.outcome for t in resent] == ["abandoned", "250 OK"], f"{killed}: {show(resent)}"
    # The claim was taken just before the first transfer (render, connect, EHLO...): 2 s of slack for that.
    assert resent[1].at - resent[0].at > CLAIM_SECONDS - 2, (
        f"{killed}: resent {resent[1].at - resent[0].at:.1f} s later, while the first claim was still live")
    assert items[killed]["attempts"] == 2, items[killed]
    assert uncertain_attempts(stack, items[killed]["id"]) == 1, "the expired claim was not counted as uncertain"
    for key in set(items) - {killed}:
        assert [t.outcome for t in copies[key]] == ["250 OK"], f"{key}: {show(copies[key])}"
        assert items[key]["attempts"] == 1 and uncertain_attempts(stack, items[key]["id"]) == 0, items[key]


def test_refused_then_accepted_sends_once(stack: Stack) -> None:
    """451 to the end of DATA — after the message was transmitted, but the server said it did not
    take it — twice, then 250. Two refusals, not one: were a refusal counted as an uncertain
    attempt, the second would end the delivery `failed` instead of retrying it."""
    refusals = 2
    handler = SinkHandler(reply=lambda attempt: "451 try later" if attempt <= refusals else "250 OK")
    settings = email_settings(stack, handler)
    story = open_shop(stack, settings)
    cursor = poll_cursor(story.admin)
    stack.start("scheduler", settings, "scheduler.log")
    stack.start("worker", settings, "worker.log")
    booking = book(story.customer, story.resource["id"], 30)

    items = settle(stack, story.admin, booking["id"], "sent", 30)
    copies = copies_by_message_id(handler, items)
    for key, delivery in items.items():
        outcomes = [t.outcome for t in copies[key]]
        assert outcomes == ["451 try later"] * refusals + ["250 OK"], f"{key}: {outcomes}"
        assert delivery["attempts"] == refusals + 1 and delivery["last_error"] is None, delivery
        assert uncertain_attempts(stack, delivery["id"]) == 0, f"{key}: a refusal counted as uncertain"
    assert Counter(t.accepted for t in handler.snapshot())[True] == len(items), "one accepted copy per email"
    events = events_since(story.admin, cursor, story.admin)
    assert not [e for e in events if e["type"] == "system.alert"], events


def test_a_job_asking_before_the_retry_is_due_sends_nothing(stack: Stack) -> None:
    """A delivery waiting for its retry gets `send_email` jobs early — a relay carrying out the
    change's job row again, a sweep, an operator's requeue: none of them makes an attempt before
    `next_attempt_at`; the scheduled retry, when due, makes the second attempt and sends it once."""
    handler = SinkHandler(reply=lambda attempt: "451 try later" if attempt == 1 else "250 OK")
    settings = email_settings(stack, handler)
    settings["EMAIL_RETRY_INTERVALS"] = "4s"
    story = open_shop(stack, settings)
    stack.start("scheduler", settings, "scheduler.log")
    stack.start("worker", settings, "worker.log")
    booking = book(story.customer, story.resource["id"], 30)

    def refused() -> list[dict[str, Any]] | None:
        found = deliveries(story.admin, booking["id"])
        return found if len(found) == 2 and all(d["last_error"] for d in found) else None

    waiting = eventually(refused, 15, "both first attempts refused", stack)
    refused_at = time.monotonic()
    for delivery in waiting:
        assert delivery["status"] == "queued" and delivery["attempts"] == 1, delivery
        assert delivery["next_attempt_at"] is not None, delivery
    jobs = JobQueue(Redis.from_url(stack.redis_url))
    for round_ in range(3):
        for delivery in waiting:
            jobs.enqueue(SEND_EMAIL, delivery["id"], job_id=f"early-{delivery['id']}-{round_}", queue=EMAIL_QUEUE)
    time.sleep(1.5)  # the worker has run the early jobs by now
    assert time.monotonic() - refused_at < 3.5, "too slow to ask before the retry was due"
    early = {d["id"]: d for d in deliveries(story.admin, booking["id"])}
    assert all(d["attempts"] == 1 for d in early.values()), f"an early job made an attempt: {early}"
    assert len(handler.snapshot()) == 2, show(handler.snapshot())

    items = settle(stack, story.admin, booking["id"], "sent", 20)
    for key, copies in copies_by_message_id(handler, items).items():
        assert [t.outcome for t in copies] == ["451 try later", "250 OK"], f"{key}: {show(copies)}"
        assert copies[1].at - copies[0].at >= 4 - 0.25, f"{key}: retried before its interval: {show(copies)}"
        assert items[key]["attempts"] == 2 and items[key]["next_attempt_at"] is None, items[key]
