"""A worker keeps its SMTP connection open between messages (app/email/sending.py, `_ConnectionCache`).

Real processes, as in test_email_workers.py (whose stack, sink and helpers these tests reuse): a
`bookwire api` on SQLite, a `bookwire worker` and an aiosmtpd sink on 127.0.0.1 that records the
client's address and port of every transfer, i.e. which connection carried it.

- Back-to-back messages share one connection.
- A kept connection that the server dropped while it sat idle (aiosmtpd's `timeout`, as a real MTA
  drops idle clients) is replaced at once: the next messages go out on the first attempt, exactly
  once, over a new connection — nothing is lost, delayed to a retry, or sent twice.
"""

from __future__ import annotations

import time

import test_email_workers as email_workers
from test_email_workers import Stack, book, eventually, open_shop, settled

# Its fixtures, offered to this module by name: a fresh Redis and data folder per test, stopped after.
module_redis = email_workers.module_redis
stack = email_workers.stack

IDLE_DROP_SECONDS = 1.0  # the sink closes a connection silent this long


def test_back_to_back_messages_share_one_connection(stack: Stack) -> None:
    sink = stack.sink()
    settings = stack.settings(sink)
    story = open_shop(stack, settings)
    bookings = [book(story.customer, story.resource["id"], 30 + 2 * i)["id"] for i in range(3)]
    stack.start("worker", settings, "worker.log")  # six deliveries wait: the worker sends them in a row
    eventually(settled(story.admin, bookings, 6), 30, "six emails sent", stack)
    transfers = sink.handler.snapshot()
    assert len(transfers) == 6 and all(t.accepted for t in transfers), [(t.message_id, t.outcome) for t in transfers]
    assert len({t.peer for t in transfers}) == 1, f"connections used: {sorted({t.peer for t in transfers})}"


def test_a_connection_the_server_dropped_is_replaced_without_loss_delay_or_duplicate(stack: Stack) -> None:
    sink = stack.sink(timeout=IDLE_DROP_SECONDS)
    settings = stack.settings(sink)
    story = open_shop(stack, settings)
    stack.start("worker", settings, "worker.log")
    first = book(story.customer, story.resource["id"], 30)["id"]
    eventually(settled(story.admin, [first], 2), 30, "the first booking's emails sent", stack)
    time.sleep(IDLE_DROP_SECONDS + 1.5)  # the sink has dropped the worker's idle connection by now
    second = book(story.customer, story.resource["id"], 32)["id"]
    items = eventually(settled(story.admin, [second], 2), 30, "the second booking's emails sent", stack)
    assert [d["attempts"] for d in items] == [1, 1], f"a failed attempt was recorded: {items}"
    transfers = sink.handler.snapshot()
    ids = [t.message_id for t in transfers]
    assert len(ids) == 4 == len(set(ids)), f"each message once: {ids}"
    assert all(t.accepted for t in transfers), [t.outcome for t in transfers]
    peers = {d["message_id"]: t.peer for d in items for t in transfers if t.message_id == d["message_id"]}
    first_peers = {t.peer for t in transfers} - set(peers.values())
    assert first_peers and not first_peers & set(peers.values()), "the second booking's mail used a new connection"
