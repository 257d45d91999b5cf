"""Conversations live, over real SSE streams and long-polls against a running app, on SQLite and
PostgreSQL: a message reaches every other participant's connections and the sender's other
connections once; receipts reach the sender; typing indicators are ephemeral (no id, throttled,
never replayed, held long-polls get them too) and reach only the other participants."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from conftest import Cast, Server, make_booking, make_resource
from events import connect, events_until_mark, mark, ok, poll
from sse import SSEEvent, SSEStream


def booking_of(cast: Cast) -> dict[str, Any]:
    return make_booking(cast.customer, make_resource(cast.owner, name="Live Talk")["id"])


def of_type(events: list[SSEEvent], event_type: str) -> list[dict[str, Any]]:
    return [e.envelope for e in events if e.event == event_type]


def test_a_message_reaches_each_connection_of_both_participants_once(server: Server, cast: Cast) -> None:
    bid = booking_of(cast)["id"]

    async def scenario() -> dict[str, list[SSEEvent]]:
        streams: dict[str, SSEStream] = {
            "customer": await connect(server.base_url, cast.customer.token),
            "owner phone": await connect(server.base_url, cast.owner.token),
            "owner laptop": await connect(server.base_url, cast.owner.token),
            "outsider": await connect(server.base_url, cast.other_customer.token),
        }
        sent = ok(cast.owner.http.post(f"/v1/bookings/{bid}/messages", json={"body": "See you at 10"}), 201)
        last = mark(cast.admin)
        got = {name: await events_until_mark(stream, last) for name, stream in streams.items()}
        for stream in streams.values():
            stream.close()
        assert all(e["data"]["id"] == sent["id"] for e in of_type(got["customer"], "message.created"))
        return got

    got = asyncio.run(scenario())
    for name in ("customer", "owner phone", "owner laptop"):
        created = of_type(got[name], "message.created")
        assert len(created) == 1, (name, created)
        assert created[0]["data"]["body"] == "See you at 10" and created[0]["id"], created
    assert of_type(got["outsider"], "message.created") == []


def test_a_receipt_reaches_the_sender(server: Server, cast: Cast) -> None:
    bid = booking_of(cast)["id"]
    question = ok(cast.customer.http.post(f"/v1/bookings/{bid}/messages", json={"body": "Projector?"}), 201)

    async def scenario() -> list[SSEEvent]:
        stream = await connect(server.base_url, cast.customer.token)
        answer = cast.owner.http.post(f"/v1/bookings/{bid}/messages/receipts", json={"read_up_to": question["id"]})
        assert answer.status_code == 204, answer.text
        events = await events_until_mark(stream, mark(cast.admin))
        stream.close()
        return events

    receipts = of_type(asyncio.run(scenario()), "message.receipt")
    assert len(receipts) == 1, receipts
    data = receipts[0]["data"]
    assert data["booking_id"] == bid and data["user_id"] == cast.owner.id
    assert data["read_up_to"] == question["id"] and data["delivered_up_to"] == question["id"] and data["at"]


def test_typing_is_ephemeral_throttled_and_never_replayed(server: Server, cast: Cast) -> None:
    bid = booking_of(cast)["id"]
    before = mark(cast.admin)

    async def scenario() -> tuple[list[SSEEvent], list[SSEEvent], list[SSEEvent]]:
        customer = await connect(server.base_url, cast.customer.token)
        owner = await connect(server.base_url, cast.owner.token)
        for _ in range(3):  # one indicator per 2 s: the second and third publish nothing
            answer = cast.owner.http.post(f"/v1/bookings/{bid}/typing")
            assert answer.status_code == 204, answer.text
        last = mark(cast.admin)
        seen_by_customer = await events_until_mark(customer, last)
        seen_by_owner = await events_until_mark(owner, last)
        customer.close()
        owner.close()
        again = await connect(server.base_url, cast.customer.token, last_event_id=before)
        replayed = await events_until_mark(again, last)
        again.close()
        return seen_by_customer, seen_by_owner, replayed

    seen, own, replayed = asyncio.run(scenario())
    typing = [e for e in seen if e.event == "conversation.typing"]
    assert len(typing) == 1, [e.event for e in seen]
    assert typing[0].id is None  # an SSE frame without an `id:` line: it moves no cursor
    envelope = typing[0].envelope
    assert envelope["id"] is None and envelope["channel"] == f"user:{cast.customer.id}"
    assert envelope["data"]["booking_id"] == bid and envelope["data"]["user_id"] == cast.owner.id
    assert envelope["data"]["until"] > envelope["occurred_at"]
    assert of_type(own, "conversation.typing") == []  # not to the one typing
    assert of_type(replayed, "conversation.typing") == []


def test_a_held_long_poll_receives_typing_and_keeps_its_cursor(server: Server, cast: Cast) -> None:
    bid = booking_of(cast)["id"]
    mark(cast.admin)  # the booking's own events are out: the cursor comes after them
    cursor = ok(poll(cast.owner.http))["cursor"]
    result: dict[str, Any] = {}

    def hold() -> None:
        result["answer"] = poll(cast.owner.http, cursor=cursor, timeout=10)

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(1.0)  # the poll is held by now
    started = time.monotonic()
    assert cast.customer.http.post(f"/v1/bookings/{bid}/typing").status_code == 204
    holder.join(timeout=15)
    body = ok(result["answer"])
    assert time.monotonic() - started < 5, "the held poll did not return at once"
    assert [e["type"] for e in body["events"]] == ["conversation.typing"], body
    assert body["events"][0]["id"] is None and body["cursor"] == cursor
