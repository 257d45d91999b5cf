"""The unread-messages email (SPEC "Conversations"), with real processes as in test_email_workers.py
(whose stack, sink and helpers these tests reuse): a `bookwire api` on SQLite, a `bookwire worker`
and a `bookwire scheduler` on a Redis of the module's own, and an aiosmtpd sink. MESSAGE_EMAIL_DELAY
is 2 s here.

- Unread after the delay: one email to the recipient listing the unread messages, none to the
  sender; messages after it bring no second email until the recipient has read.
- Read in time: no email.
- Once read, a new message brings a new email.
"""

from __future__ import annotations

import time
from typing import Any

import redis
import test_email_workers as email_workers
from conftest import Actor
from test_email_workers import Stack, Story, Transfer, eventually, open_shop

# Its fixtures, offered to this module by name: a fresh Redis and data folder per test, stopped after.
module_redis = email_workers.module_redis
stack = email_workers.stack

DELAY = 2.0  # MESSAGE_EMAIL_DELAY
QUIET = DELAY + 3.0  # long enough for an email that should not come to have come


def start(stack: Stack, **extra: str) -> tuple[Story, Any, str]:
    """API, scheduler and worker with a 2 s MESSAGE_EMAIL_DELAY (and `extra` settings); the story and
    its booking's id."""
    sink = stack.sink()
    settings = stack.settings(sink, MESSAGE_EMAIL_DELAY=f"{int(DELAY)}s", **extra)
    story = open_shop(stack, settings)
    stack.start("scheduler", settings, "scheduler.log")
    stack.start("worker", settings, "worker.log")
    booking = email_workers.book(story.customer, story.resource["id"], 30)
    return story, sink, booking["id"]


def say(actor: Actor, booking_id: str, body: str) -> dict[str, Any]:
    answer = actor.http.post(f"/v1/bookings/{booking_id}/messages", json={"body": body})
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result


def read(actor: Actor, booking_id: str, message_id: str) -> None:
    answer = actor.http.post(f"/v1/bookings/{booking_id}/messages/receipts", json={"read_up_to": message_id})
    assert answer.status_code == 204, answer.text


def unread_emails(sink: Any, to: str) -> list[Transfer]:
    return [t for t in sink.handler.snapshot() if to in t.rcpt_tos and "unread" in str(t.message()["Subject"])]


def text_of(transfer: Transfer) -> str:
    body = transfer.message().get_body(("plain",))
    assert body is not None
    return str(body.get_content())


def test_unread_messages_bring_one_email_until_read(stack: Stack) -> None:
    story, sink, bid = start(stack)
    say(story.customer, bid, "Is the room quiet?")
    say(story.customer, bid, "And is there coffee?")
    first = eventually(lambda: unread_emails(sink, story.owner.email), 15, "the unread email", stack)
    assert len(first) == 1, first
    text = text_of(first[0])
    assert "Is the room quiet?" in text and "And is there coffee?" in text and "2 unread messages" in text, text
    assert "Carol Customer" in text and f"/bookings/{bid}" in text, text
    assert unread_emails(sink, story.customer.email) == []  # the sender gets none
    later = say(story.customer, bid, "Hello?")  # still unread: no second email
    time.sleep(QUIET)
    assert len(unread_emails(sink, story.owner.email)) == 1
    read(story.owner, bid, later["id"])
    say(story.customer, bid, "Thanks for reading!")  # read since the last email: a new one
    second = eventually(lambda: (e := unread_emails(sink, story.owner.email))[1:] and e, 15, "a second email", stack)
    assert len(second) == 2 and "Thanks for reading!" in text_of(second[1])
    assert "Is the room quiet?" not in text_of(second[1])  # only what is unread now
    time.sleep(QUIET)
    assert len(unread_emails(sink, story.owner.email)) == 2


def test_messages_read_in_time_bring_no_email(stack: Stack) -> None:
    story, sink, bid = start(stack)
    message = say(story.owner, bid, "Your room is ready")
    read(story.customer, bid, message["id"])
    time.sleep(QUIET)
    assert unread_emails(sink, story.customer.email) == []
    assert unread_emails(sink, story.owner.email) == []


def test_an_unread_email_whose_job_was_lost_is_sent_by_the_sweep(stack: Stack) -> None:
    story, sink, bid = start(stack, SWEEP_INTERVAL="2s")  # the default 10 s would only make this wait longer
    connection = redis.Redis.from_url(stack.redis_url)
    say(story.customer, bid, "Anyone there?")

    def planned() -> list[bytes]:
        return [j for j in connection.zrange("rq:scheduler:scheduled_jobs", 0, -1) if j.startswith(b"bookwire-unread-")]

    lost = eventually(planned, 10, "the unread email planned in rq-scheduler", stack)
    connection.zrem("rq:scheduler:scheduled_jobs", *lost)  # as a Redis that lost its schedule would
    connection.close()
    # due in 2 s; the sweep runs every 2 s and takes a plan 3 s overdue
    sent = eventually(lambda: unread_emails(sink, story.owner.email), 30, "the unread email, by the sweep", stack)
    assert len(sent) == 1 and "Anyone there?" in text_of(sent[0])
