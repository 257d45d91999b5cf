"""Real-time delivery over real connections: who receives which event, order, replay, dedup, framing,
heartbeats and stream endings, long-poll, and the in-app notification inbox.

Every test talks to a running `bookwire api`: SSE is parsed from the bytes on the wire (`tests/sse.py`),
long-poll goes over HTTP. Negative checks ("nobody else got it") never sleep: after the events under
test, an admin publishes a `test.mark` event to `broadcast`, which every connection reads; since a
connection receives events in one total order, whatever it was going to receive has arrived by the
time the mark does. Settings-specific behaviour (heartbeat interval, max age, token expiry) runs on an
extra API on SQLite started with `running_api`.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from conftest import (
    Actor,
    Cast,
    Server,
    assert_problem,
    at,
    make_booking,
    make_resource,
    register,
    running_api,
)
from events import (
    ENVELOPE_FIELDS,
    apublish,
    assert_clean_framing,
    bearer,
    check_envelope,
    connect,
    events_until_mark,
    id_key,
    mark,
    next_real,
    ok,
    own_channels,
    poll,
    publish,
    publish_body,
    read_until,
    service_token,
    settle,
    stream_token,
    stream_url,
)
from sse import SSEEvent, SSEStream, open_stream

TICK_SLACK = 1.2  # the server checks heartbeats and deadlines once a second; allow one tick plus scheduling

Key = tuple[str, str]
Planned = tuple[Key, list[str]]  # what identifies an event, and the channels it is published to


# --- 1. channel rules --------------------------------------------------------------------------------------


def event_key(envelope: dict[str, Any]) -> Key:
    """What a received event is about, so that it can be matched with what the test did."""
    kind, data = envelope["type"], envelope["data"]
    if kind == "resource.availability":
        return kind, data["resource_id"]
    if kind.startswith(("booking.", "resource.")):
        return kind, data["id"]
    if kind == "notification.created":
        return kind, f"{data['type']} {data['data']['id']}"
    return kind, envelope["id"]


def act_out_catalogue(cast: Cast, resource: dict[str, Any]) -> list[Planned]:
    """Cause every event type of the catalogue (but reminders, expiry, system alerts); what was published where."""
    customer, owner, admin = cast.customer, cast.owner, cast.admin
    rid = resource["id"]
    topic = f"resource:{rid}"
    plan: list[Planned] = []

    def booking_event(kind: str, booking: dict[str, Any], recipient: Actor) -> None:
        plan.append(((kind, booking["id"]), [f"user:{customer.id}", f"user:{owner.id}", "role:admin"]))
        plan.append((("notification.created", f"{kind} {booking['id']}"), [f"user:{recipient.id}"]))

    other = make_resource(owner, name="Room B")
    plan.append((("resource.created", other["id"]), [f"resource:{other['id']}", "role:customer", "role:admin"]))
    plan.append((("resource.availability", rid), [topic]))

    first = make_booking(customer, rid, 24)
    booking_event("booking.created", first, owner)
    url = f"/v1/bookings/{first['id']}"
    booking_event("booking.confirmed", ok(owner.http.post(f"{url}/confirm")), customer)
    booking_event("booking.rescheduled", ok(customer.http.patch(url, json={"starts_at": at(48), "ends_at": at(49)})),
                  owner)
    booking_event("booking.updated", ok(customer.http.patch(url, json={"notes": "window seat"})), owner)
    booking_event("booking.checked_in", ok(owner.http.post(f"{url}/check-in")), customer)
    booking_event("booking.completed", ok(owner.http.post(f"{url}/complete")), customer)
    second = make_booking(customer, rid, 30)
    booking_event("booking.created", second, owner)
    booking_event("booking.rejected", ok(owner.http.post(f"/v1/bookings/{second['id']}/reject")), customer)
    third = make_booking(customer, rid, 34)
    booking_event("booking.created", third, owner)
    booking_event("booking.cancelled", ok(customer.http.post(f"/v1/bookings/{third['id']}/cancel")), owner)

    resource_channels = [topic, "role:customer", "role:admin"]
    ok(owner.http.patch(f"/v1/resources/{rid}", json={"name": "Room A2"}))
    plan.append((("resource.updated", rid), resource_channels))
    ok(owner.http.patch(f"/v1/resources/{rid}", json={"price_cents": 1500}))
    plan.append((("resource.pricing_updated", rid), resource_channels))

    mine = f"user:{customer.id}"
    custom_targets = ([mine], ["role:provider"], ["broadcast"], [topic],
                      ["role:customer", mine, "broadcast"], [topic, mine, "role:admin"])
    for channels in custom_targets:
        plan.append((("test.custom", publish(admin.http, "test.custom", channels, {"to": channels})), channels))
    for audience, channel in (("all", "broadcast"), ("provider", "role:provider")):
        answer = ok(admin.http.post("/v1/admin/announcements",
                                    json={"title": "Notice", "body": "Closed on Monday", "audience": audience}), 202)
        plan.append((("announcement", answer["id"]), [channel]))

    assert owner.http.delete(f"/v1/resources/{rid}").status_code == 204
    plan.append((("resource.deleted", rid), resource_channels))
    return plan


def expected_view(plan: list[Planned], reads: set[str]) -> set[tuple[Key, str]]:
    """What a connection reading `reads` should get: each event once, on the first of its channels it reads."""
    view: set[tuple[Key, str]] = set()
    for key, channels in plan:
        first = next((c for c in channels if c in reads), None)
        if first is not None:
            view.add((key, first))
    return view


def test_every_event_type_reaches_exactly_its_audiences(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.owner, capacity=1)
    topic = f"resource:{resource['id']}"
    readers: dict[str, tuple[Actor, list[str]]] = {
        "customer": (cast.customer, []),
        "customer_following": (cast.customer, [topic]),
        "other_customer": (cast.other_customer, []),
        "owner": (cast.owner, []),
        "other_provider": (cast.other_provider, []),
        "provider_following": (cast.other_provider, [topic]),
        "admin": (cast.admin, []),
        "admin_watching": (cast.admin, [topic, f"user:{cast.customer.id}", "role:provider"]),
    }

    async def scenario() -> tuple[list[Planned], dict[str, list[SSEEvent]]]:
        streams = {name: await connect(server.base_url, actor.token, topics=",".join(topics))
                   for name, (actor, topics) in readers.items()}
        try:
            await settle(list(streams.values()), cast.admin)
            plan = act_out_catalogue(cast, resource)
            last = mark(cast.admin)
            return plan, {name: await events_until_mark(stream, last) for name, stream in streams.items()}
        finally:
            for stream in streams.values():
                stream.close()

    plan, received = asyncio.run(scenario())
    for name, (actor, topics) in readers.items():
        events = received[name]
        ids = [e.id for e in events]
        assert len(ids) == len(set(ids)), f"{name} received an event twice"
        # presence.changed comes and goes with the session's other connections (the cast's users are
        # shared by every test): it is not this plan's, and test_presence_changes.py covers it.
        got = {(event_key(e.envelope), e.envelope["channel"]) for e in events
               if e.envelope["type"] != "presence.changed"}
        want = expected_view(plan, set(own_channels(actor)) | set(topics))
        assert got == want, f"{name}: unexpected {sorted(got - want)}; missing {sorted(want - got)}"
    # the plan covers the catalogue this test can cause, and each kind reached someone
    kinds = {e.event for events in received.values() for e in events}
    assert kinds >= {"booking.created", "booking.confirmed", "booking.rejected", "booking.cancelled",
                     "booking.rescheduled", "booking.updated", "booking.checked_in", "booking.completed",
                     "resource.created", "resource.updated", "resource.pricing_updated", "resource.deleted",
                     "resource.availability", "notification.created", "announcement", "test.custom"}, kinds


FORBIDDEN_TOPICS = [
    ("customer", "user:{other_customer}"),
    ("customer", "role:admin"),
    ("customer", "role:provider"),
    ("owner", "role:customer"),
    ("owner", "user:{admin}"),
    ("customer", "broadcast,user:{owner}"),
    ("customer", "resource:{unknown}"),
    ("customer", "resource:{inactive}"),
    ("customer", "resource:{deleted}"),
    ("customer", "everyone"),
]


def fill_topics(template: str, cast: Cast) -> str:
    values = {"other_customer": cast.other_customer.id, "admin": cast.admin.id, "owner": cast.owner.id,
              "unknown": str(uuid.uuid4())}
    if "{inactive}" in template:
        values["inactive"] = make_resource(cast.owner, active=False)["id"]
    if "{deleted}" in template:
        deleted = make_resource(cast.owner)["id"]
        assert cast.owner.http.delete(f"/v1/resources/{deleted}").status_code == 204
        values["deleted"] = deleted
    return template.format(**values)


@pytest.mark.parametrize(("who", "template"), FORBIDDEN_TOPICS, ids=[f"{w}-{t}" for w, t in FORBIDDEN_TOPICS])
def test_forbidden_topics_are_403_on_stream_and_poll(server: Server, cast: Cast, who: str, template: str) -> None:
    actor: Actor = getattr(cast, who)
    topics = fill_topics(template, cast)

    async def open_forbidden() -> SSEStream:
        return await open_stream(stream_url(server.base_url, topics=topics), bearer(actor.token))

    stream = asyncio.run(open_forbidden())
    assert stream.status == 403, (stream.status, stream.body)
    assert stream.headers["content-type"].startswith("application/problem+json")
    assert_problem(poll(actor.http, topics=topics), 403)


def test_admins_may_read_other_users_and_roles(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.owner)
    customer, owner = cast.customer, cast.owner
    admin_topics = f"user:{customer.id},user:{owner.id},role:customer,role:provider,resource:{resource['id']}"
    own_topics = f"user:{customer.id},role:customer,broadcast,resource:{resource['id']}"

    async def scenario() -> None:
        for actor, topics in ((cast.admin, admin_topics), (customer, own_topics)):
            stream = await connect(server.base_url, actor.token, topics=topics)
            stream.close()

    asyncio.run(scenario())
    assert ok(poll(cast.admin.http, topics=admin_topics))["events"] == []
    assert ok(poll(customer.http, topics=own_topics))["events"] == []


def test_deactivated_users_stream_gets_closing_then_ends(server: Server, cast: Cast) -> None:
    user = register(server, "customer", "Short Lived")

    async def scenario() -> None:
        stream = await connect(server.base_url, user.token)
        ok(cast.admin.http.patch(f"/v1/users/{user.id}", json={"active": False}))
        closing = await next_real(stream)
        assert closing is not None and closing.event == "stream.closing", closing
        envelope = closing.envelope
        assert closing.id is None and envelope["id"] is None and envelope["channel"] is None, envelope
        assert envelope["data"]["reason"] == "deactivated"
        assert await next_real(stream) is None  # the server closed it
        again = await open_stream(stream_url(server.base_url), bearer(user.token))
        assert again.status == 401

    asyncio.run(scenario())


# --- 2. order ----------------------------------------------------------------------------------------------


def mixed_targets(customer: Actor) -> list[tuple[list[str], str]]:
    """Channel lists an event may go to, and the channel the customer's connection sees it on."""
    mine = f"user:{customer.id}"
    return [([mine], mine), (["role:customer"], "role:customer"), (["broadcast"], "broadcast"),
            (["role:provider", "role:customer", mine], "role:customer")]


def test_500_concurrent_publishes_arrive_in_id_order_on_sse_and_poll(server: Server, cast: Cast) -> None:
    """Events on several channels of one connection, published concurrently, come in one id order."""
    targets = mixed_targets(cast.customer)
    cursor = ok(poll(cast.customer.http))["cursor"]

    async def scenario() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        stream = await connect(server.base_url, cast.customer.token)
        limit = asyncio.Semaphore(32)
        async with httpx.AsyncClient(base_url=server.base_url, headers=bearer(cast.admin.token), timeout=30) as client:

            async def one(index: int) -> tuple[str, str]:
                channels, seen_on = targets[index % len(targets)]
                async with limit:
                    return await apublish(client, "test.order", channels, {"n": index}), seen_on

            published = await asyncio.gather(*(one(i) for i in range(500)))
        expected = sorted(published, key=lambda pair: id_key(pair[0]))
        events = await read_until(stream, expected[-1][0], timeout=20)
        stream.close()
        return expected, [(e.id or "", check_envelope(e)["channel"]) for e in events]

    expected, received = asyncio.run(scenario())
    assert len({event_id for event_id, _ in expected}) == 500
    assert received == expected
    polled: list[tuple[str, str]] = []
    for _ in range(50):
        answer = ok(poll(cast.customer.http, cursor=cursor, timeout=5))
        polled += [(e["id"], e["channel"]) for e in answer["events"]]
        cursor = answer["cursor"]
        if len(polled) >= len(expected):
            break
    assert polled == expected
    assert cursor == expected[-1][0]


# --- 3. replay ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("resume", ["header", "query"])
def test_reconnect_replays_missed_events_once_in_order(server: Server, cast: Cast, resume: str) -> None:
    """Four publishers keep going the whole time, so events land while the second connection replays."""
    customer = cast.customer
    targets = mixed_targets(customer)

    async def scenario() -> tuple[list[str], str, list[tuple[str, str]], list[tuple[str, str]]]:
        published: list[tuple[str, str]] = []
        stop = asyncio.Event()
        async with httpx.AsyncClient(base_url=server.base_url, headers=bearer(cast.admin.token), timeout=30) as client:

            async def publisher(worker: int) -> None:
                channels, seen_on = targets[worker]
                for n in range(1500):  # bounded; stopped long before
                    if stop.is_set():
                        return
                    event_id = await apublish(client, "test.replay", channels, {"worker": worker, "n": n})
                    published.append((event_id, seen_on))

            async def published_at_least(count: int) -> None:
                for _ in range(500):
                    if len(published) >= count:
                        return
                    await asyncio.sleep(0.01)
                pytest.fail("the publishers are stuck")

            tasks = [asyncio.create_task(publisher(w)) for w in range(len(targets))]
            try:
                first = await connect(server.base_url, customer.token)
                before = [e.id or "" for e in await first.events(15)]
                first.close()
                await published_at_least(len(published) + 100)  # missed while away
                last = before[-1]
                if resume == "header":
                    second = await connect(server.base_url, customer.token, headers={"Last-Event-ID": last})
                else:
                    second = await connect(server.base_url, customer.token, last_event_id=last)
                await published_at_least(len(published) + 100)  # live ones after the seam
            finally:
                stop.set()
                await asyncio.gather(*tasks)
            final = await apublish(client, "test.replay", [f"user:{customer.id}"], {"final": True})
        events = await read_until(second, final, timeout=20)
        second.close()
        after = [(e.id or "", check_envelope(e)["channel"]) for e in events]
        everything = sorted([*published, (final, f"user:{customer.id}")], key=lambda pair: id_key(pair[0]))
        return before, last, after, everything

    before, last, after, published = asyncio.run(scenario())
    ids = [event_id for event_id, _ in published]
    start = ids.index(before[0])
    assert before == ids[start:start + len(before)]  # live, in order, no gap
    missed = [pair for pair in published if id_key(pair[0]) > id_key(last)]
    assert len(missed) > 200
    after_ids = [event_id for event_id, _ in after]
    assert len(after_ids) == len(set(after_ids)), f"{len(after_ids) - len(set(after_ids))} duplicates at the seam"
    assert after == missed


def never_issued_id() -> str:
    return f"{int(time.time() * 1000) - 5000}-999"


RESET_CASES = [
    ("header", "1-0"),
    ("query", "1-0"),
    ("header", "never-issued"),
    ("query", "never-issued"),
    ("header", "not-an-id"),
    ("query", "12345678901234567890-1"),
]


@pytest.mark.parametrize(("resume", "bad_id"), RESET_CASES, ids=[f"{r}-{b}" for r, b in RESET_CASES])
def test_unknown_or_unreadable_last_event_id_gives_stream_reset(
    server: Server, cast: Cast, resume: str, bad_id: str
) -> None:
    customer = cast.customer
    last_event_id = never_issued_id() if bad_id == "never-issued" else bad_id

    async def scenario() -> None:
        if resume == "header":
            stream = await connect(server.base_url, customer.token, headers={"Last-Event-ID": last_event_id})
        else:
            stream = await connect(server.base_url, customer.token, last_event_id=last_event_id)
        reset = await next_real(stream)
        assert reset is not None and reset.event == "stream.reset", reset
        envelope = check_envelope(reset)
        assert envelope["channel"] is None and reset.id and envelope["data"]["cursor"] == reset.id, envelope
        live = publish(cast.admin.http, "test.after_reset", [f"user:{customer.id}"])
        event = await next_real(stream)
        assert event is not None and event.id == live and check_envelope(event)["channel"] == f"user:{customer.id}"
        assert id_key(live) > id_key(reset.id)
        stream.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("cursor", ["not-an-id", "1-2-3", "-1-0", "abc-def"])
def test_poll_with_unreadable_cursor_is_400(server: Server, cast: Cast, cursor: str) -> None:
    assert_problem(poll(cast.customer.http, cursor=cursor, timeout=0), 400)


@pytest.mark.parametrize("cursor", ["1-0", "never-issued"])
def test_poll_with_unknown_cursor_returns_stream_reset(server: Server, cast: Cast, cursor: str) -> None:
    answer = ok(poll(cast.customer.http, cursor=never_issued_id() if cursor == "never-issued" else cursor, timeout=5))
    [reset] = answer["events"]
    assert set(reset) == ENVELOPE_FIELDS and reset["type"] == "stream.reset" and reset["channel"] is None, reset
    assert reset["id"] == answer["cursor"] == reset["data"]["cursor"], answer
    live = publish(cast.admin.http, "test.after_reset", [f"user:{cast.customer.id}"])
    assert [e["id"] for e in ok(poll(cast.customer.http, cursor=answer["cursor"], timeout=5))["events"]] == [live]


# --- 4. dedup and who may publish ---------------------------------------------------------------------------


def test_repeated_dedup_key_publishes_once(server: Server, cast: Cast) -> None:
    customer, admin = cast.customer, cast.admin
    key = f"order-{uuid.uuid4()}"
    cursor = ok(poll(customer.http))["cursor"]

    async def scenario() -> tuple[str, list[SSEEvent]]:
        stream = await connect(server.base_url, customer.token)
        await settle([stream], admin)
        first = publish(admin.http, "test.dedup", [f"user:{customer.id}"], {"try": 1}, dedup_key=key)
        for attempt in (2, 3):
            answer = admin.http.post("/v1/events", json=publish_body(
                "test.dedup", [f"user:{customer.id}"], {"try": attempt}, key))
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"id": first, "deduplicated": True}
        events = await events_until_mark(stream, mark(admin))
        stream.close()
        return first, events

    first, events = asyncio.run(scenario())
    assert [(e.id, e.envelope["data"]) for e in events] == [(first, {"try": 1})]
    polled = ok(poll(customer.http, cursor=cursor, timeout=5))["events"]
    assert [e["id"] for e in polled if e["type"] == "test.dedup"] == [first]


BAD_TYPES = ["booking.created", "booking.custom", "resource.custom", "notification.custom", "reminder.custom",
             "stream.reset", "system.alert", "announcement.custom", "announcements.custom", "announcement",
             "nodot", "Upper.case", "1abc.x", "a..b", "a.b-c", "a.", ".a", "", "a.b c"]


@pytest.mark.parametrize("event_type", BAD_TYPES)
def test_reserved_or_malformed_types_are_422(server: Server, cast: Cast, event_type: str) -> None:
    answer = cast.admin.http.post("/v1/events", json=publish_body(event_type, ["broadcast"], None, None))
    problem = assert_problem(answer, 422)
    assert any(e["field"] == "type" for e in problem.get("errors", [])), problem


@pytest.mark.parametrize("channel", ["everyone", "user:not-a-uuid", "role:superuser", "resource:", "Broadcast"])
def test_bad_channels_are_422(server: Server, cast: Cast, channel: str) -> None:
    assert_problem(cast.admin.http.post("/v1/events", json=publish_body("test.x", [channel], None, None)), 422)


@pytest.mark.parametrize("who", ["customer", "owner"])
def test_customers_and_providers_may_not_publish(server: Server, cast: Cast, who: str) -> None:
    actor: Actor = getattr(cast, who)
    assert_problem(actor.http.post("/v1/events", json=publish_body("test.x", ["broadcast"], None, None)), 403)


def test_service_token_may_publish_and_nothing_else(server: Server, cast: Cast) -> None:
    token = service_token()
    with httpx.Client(base_url=server.base_url, headers=bearer(token), timeout=30) as client:
        cursor = ok(poll(cast.customer.http))["cursor"]
        event_id = publish(client, "crm.contact_updated", [f"user:{cast.customer.id}"], {"crm": "x"})
        assert [e["id"] for e in ok(poll(cast.customer.http, cursor=cursor, timeout=5))["events"]] == [event_id]
        assert client.get("/v1/me").status_code in (401, 403)
        assert poll(client).status_code in (401, 403)
    with httpx.Client(base_url=server.base_url, headers=bearer(service_token("events:read")), timeout=30) as client:
        assert client.post("/v1/events", json=publish_body("test.x", ["broadcast"], None, None)).status_code in (
            401, 403)


# --- 5. framing, heartbeats, endings -----------------------------------------------------------------------

HOSTILE = {
    "lf": "one\nid: 1-1\nevent: forged\ndata: {}\n\nretry: 1\n\n: comment",
    "crlf": "two\r\nid: 1-1\r\n\r\nevent: forged\r\ndata: x\r\n",
    "cr": "three\rid: 1-1\r\revent: forged\rdata: x\r",
    "nul": "four\x00\nid: 1-1\x00\n\ndata: x",
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_text_in_custom_event_data_is_one_event(server: Server, cast: Cast, kind: str) -> None:
    text = HOSTILE[kind]
    data = {"text": text, "list": [text, {text: text}], text: 1}

    async def scenario() -> None:
        stream = await connect(server.base_url, cast.customer.token)
        await settle([stream], cast.admin)
        event_id = publish(cast.admin.http, "test.hostile", [f"user:{cast.customer.id}"], data)
        events = await events_until_mark(stream, mark(cast.admin))
        assert [(e.id, e.event) for e in events] == [(event_id, "test.hostile")]
        assert events[0].envelope["data"] == data
        assert_clean_framing(bytes(stream.raw))
        stream.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("where", ["notes", "announcement"])
@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_text_in_notes_and_announcements(server: Server, cast: Cast, where: str, kind: str) -> None:
    """Free text allows `\\n` only: it round-trips as one event; `\\r` and NUL are refused (422), nothing is sent."""
    text = HOSTILE[kind]
    accepted = "\r" not in text and "\x00" not in text
    booking = make_booking(cast.customer, make_resource(cast.owner)["id"]) if where == "notes" else None

    async def scenario() -> None:
        stream = await connect(server.base_url, cast.customer.token)
        await settle([stream], cast.admin)
        if booking is not None:
            answer = cast.customer.http.patch(f"/v1/bookings/{booking['id']}", json={"notes": text})
        else:
            answer = cast.admin.http.post("/v1/admin/announcements", json={"title": "Hi", "body": text})
        events = await events_until_mark(stream, mark(cast.admin))
        if accepted:
            assert answer.status_code in (200, 202), answer.text
            [event] = events
            data = event.envelope["data"]
            if booking is not None:
                assert event.event == "booking.updated" and data["id"] == booking["id"] and data["notes"] == text
            else:
                assert event.event == "announcement" and data["body"] == text
        else:
            problem = assert_problem(answer, 422)
            assert any(e["field"] == ("notes" if booking else "body") for e in problem["errors"]), problem
            assert events == []
        assert_clean_framing(bytes(stream.raw))
        stream.close()

    asyncio.run(scenario())


def test_stream_is_not_compressed(server: Server, cast: Cast) -> None:
    """`open_stream` sends `Accept-Encoding: gzip, br`; a large event still goes out as plain text."""

    async def scenario() -> None:
        stream = await connect(server.base_url, cast.customer.token)
        assert "content-encoding" not in stream.headers and stream.headers["cache-control"] == "no-cache"
        event_id = publish(cast.admin.http, "test.plain", [f"user:{cast.customer.id}"], {"pad": "x" * 4000})
        event = await next_real(stream)
        assert event is not None and event.id == event_id
        assert f"id: {event_id}\nevent: test.plain\ndata: ".encode() in stream.raw
        stream.close()

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def max_age_api(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[str]:
    """An extra API (SQLite) that ends streams after 3 s (± 10 %)."""
    data_dir: Path = tmp_path_factory.mktemp("max-age-api")
    with running_api(data_dir, redis_url, SSE_MAX_AGE="3s") as (url, _):
        yield url


@pytest.fixture(scope="module")
def fast_api(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[str]:
    """An extra API (SQLite) with a 1 s heartbeat and access tokens that live 3 s."""
    data_dir: Path = tmp_path_factory.mktemp("fast-api")
    with running_api(data_dir, redis_url, SSE_HEARTBEAT_SECONDS="1", ACCESS_TOKEN_TTL="3s") as (url, _):
        yield url


def extra_server(url: str, tmp_path: Path) -> Server:
    return Server("sqlite", url, "", tmp_path)


def test_heartbeat_comments_on_a_quiet_stream(fast_api: str, tmp_path: Path) -> None:
    user = register(extra_server(fast_api, tmp_path), "customer")
    token = stream_token(user)  # a stream token does not bound the stream (the access token lives 3 s here)
    watch = 4.5

    async def scenario() -> list[float]:
        stream = await connect(fast_api, access_token=token)
        opened = time.monotonic()
        beats: list[float] = []
        while time.monotonic() - opened < watch:
            try:
                event = await stream.next(watch - (time.monotonic() - opened), comments=True)
            except TimeoutError:
                break
            assert event is not None and event.comment is not None, f"a quiet stream got {event}"
            beats.append(time.monotonic() - opened)
        assert re.search(rb"\n\n:[^\n]*\n\n", bytes(stream.raw)), bytes(stream.raw)
        stream.close()
        return beats

    beats = asyncio.run(scenario())
    assert len(beats) >= 3, f"heartbeats at {beats} s with SSE_HEARTBEAT_SECONDS=1"
    assert beats[0] <= 1 + TICK_SLACK, f"first heartbeat after {beats[0]} s"
    gaps = [b - a for a, b in pairwise(beats)]
    assert 0.5 <= min(gaps) and max(gaps) <= 1.6, f"heartbeats at {beats} s with SSE_HEARTBEAT_SECONDS=1"


def test_stream_closes_with_max_age(max_age_api: str, tmp_path: Path) -> None:
    user = register(extra_server(max_age_api, tmp_path), "customer")
    token = stream_token(user)  # a stream token does not bound the stream: only SSE_MAX_AGE does

    async def scenario() -> tuple[SSEEvent, float]:
        stream = await connect(max_age_api, access_token=token)
        opened = time.monotonic()
        closing = await next_real(stream, timeout=3.3 + TICK_SLACK + 1)
        elapsed = time.monotonic() - opened
        assert closing is not None
        assert await next_real(stream) is None  # then the server closes it
        return closing, elapsed

    closing, elapsed = asyncio.run(scenario())
    assert closing.event == "stream.closing" and closing.id is None, closing
    assert closing.envelope["channel"] is None and closing.envelope["data"]["reason"] == "max_age", closing.envelope
    assert 2.7 - 0.1 <= elapsed <= 3.3 + TICK_SLACK, elapsed


def test_stream_opened_with_access_token_closes_when_it_expires(fast_api: str, tmp_path: Path) -> None:
    user = register(extra_server(fast_api, tmp_path), "customer")
    expires_at = jwt.decode(user.token, options={"verify_signature": False})["exp"]

    async def scenario() -> tuple[SSEEvent, float]:
        stream = await connect(fast_api, user.token)
        closing = await next_real(stream, timeout=3 + TICK_SLACK + 1)
        closed_at = time.time()
        assert closing is not None
        assert await next_real(stream) is None
        return closing, closed_at

    closing, closed_at = asyncio.run(scenario())
    assert closing.event == "stream.closing" and closing.id is None, closing
    assert closing.envelope["data"]["reason"] == "token_expired", closing.envelope
    assert expires_at - 0.1 <= closed_at <= expires_at + TICK_SLACK, (closed_at, expires_at)


# --- 6. long-poll ------------------------------------------------------------------------------------------


def test_poll_without_cursor_returns_current_cursor_at_once(server: Server, cast: Cast) -> None:
    latest = publish(cast.admin.http, "test.poll", [f"user:{cast.other_customer.id}"])
    started = time.monotonic()
    answer = ok(poll(cast.customer.http, timeout=10))
    assert time.monotonic() - started < 0.5
    assert answer == {"events": [], "cursor": latest}


def test_poll_returns_waiting_events_at_once(server: Server, cast: Cast) -> None:
    customer = cast.customer
    cursor = ok(poll(customer.http))["cursor"]
    ids = [publish(cast.admin.http, "test.poll", [f"user:{customer.id}"], {"n": n}) for n in range(3)]
    started = time.monotonic()
    answer = ok(poll(customer.http, cursor=cursor, timeout=10))
    assert time.monotonic() - started < 0.5
    assert [e["id"] for e in answer["events"]] == ids and answer["cursor"] == ids[-1]
    assert all(set(e) == ENVELOPE_FIELDS and e["channel"] == f"user:{customer.id}" for e in answer["events"])
    assert [e["data"]["n"] for e in answer["events"]] == [0, 1, 2]


def test_poll_holds_for_timeout_when_quiet(server: Server, cast: Cast) -> None:
    cursor = ok(poll(cast.customer.http))["cursor"]
    started = time.monotonic()
    answer = ok(poll(cast.customer.http, cursor=cursor, timeout=2))
    elapsed = time.monotonic() - started
    assert 1.9 <= elapsed <= 2.6, elapsed
    assert answer == {"events": [], "cursor": cursor}
    started = time.monotonic()
    assert ok(poll(cast.customer.http, cursor=cursor, timeout=0)) == {"events": [], "cursor": cursor}
    assert ok(poll(cast.customer.http, timeout=60))["events"] == []  # the bounds are allowed
    assert time.monotonic() - started < 0.5


def test_held_poll_wakes_soon_after_a_publish(server: Server, cast: Cast) -> None:
    customer = cast.customer
    cursor = ok(poll(customer.http))["cursor"]

    async def scenario() -> tuple[dict[str, Any], float, float, str]:
        async with (
            httpx.AsyncClient(base_url=server.base_url, headers=bearer(customer.token), timeout=30) as reader,
            httpx.AsyncClient(base_url=server.base_url, headers=bearer(cast.admin.token), timeout=30) as writer,
        ):

            async def held() -> tuple[dict[str, Any], float]:
                answer = await reader.get("/v1/events/poll", params={"cursor": cursor, "timeout": 10})
                return ok(answer), time.monotonic()

            waiting = asyncio.create_task(held())
            await asyncio.sleep(0.5)
            assert not waiting.done(), "the poll returned before anything was published"
            published_at = time.monotonic()
            event_id = await apublish(writer, "test.wake", [f"user:{customer.id}"])
            answer, returned_at = await waiting
            return answer, published_at, returned_at, event_id

    answer, published_at, returned_at, event_id = asyncio.run(scenario())
    assert [e["id"] for e in answer["events"]] == [event_id] and answer["cursor"] == event_id
    assert returned_at - published_at < 0.3, returned_at - published_at


@pytest.mark.parametrize("timeout", ["-1", "61", "1.5", "ten", "+5", ""])
def test_poll_timeout_out_of_range_or_not_integer_is_422(server: Server, cast: Cast, timeout: str) -> None:
    problem = assert_problem(poll(cast.customer.http, timeout=timeout), 422)
    assert any(e["field"] == "timeout" for e in problem.get("errors", [])), problem


def test_url_token_must_be_a_stream_token(server: Server, cast: Cast) -> None:
    customer = cast.customer
    token = stream_token(customer)
    with httpx.Client(base_url=server.base_url, timeout=30) as anonymous:
        assert set(ok(poll(anonymous, access_token=token))) == {"events", "cursor"}
        assert_problem(poll(anonymous, access_token=customer.token), 401)
        assert_problem(poll(anonymous), 401)
    with httpx.Client(base_url=server.base_url, headers=bearer(token), timeout=30) as by_header:
        assert set(ok(poll(by_header))) == {"events", "cursor"}

    async def scenario() -> None:
        stream = await connect(server.base_url, access_token=token)
        event_id = publish(cast.admin.http, "test.url_token", [f"user:{customer.id}"])
        event = await next_real(stream)
        assert event is not None and event.id == event_id
        stream.close()
        refused = await open_stream(stream_url(server.base_url, access_token=customer.token))
        assert refused.status == 401

    asyncio.run(scenario())


# --- 7. notifications --------------------------------------------------------------------------------------


def unread(actor: Actor) -> int:
    count: int = ok(actor.http.get("/v1/notifications/unread-count"))["unread"]
    return count


def test_booking_changes_notify_the_people_concerned_but_not_the_actor(server: Server, cast: Cast) -> None:
    customer, owner, admin = cast.customer, cast.owner, cast.admin
    for actor in (customer, owner):
        assert ok(actor.http.post("/v1/notifications/read-all")) == {"unread": 0}
        assert unread(actor) == 0
    resource = make_resource(owner)

    async def scenario() -> tuple[dict[str, Any], list[SSEEvent]]:
        stream = await connect(server.base_url, owner.token)
        await settle([stream], admin)
        booking = make_booking(customer, resource["id"])
        events = await events_until_mark(stream, mark(admin))
        stream.close()
        return booking, events

    booking, events = asyncio.run(scenario())
    assert (unread(customer), unread(owner)) == (0, 1)  # the customer acted
    [item] = ok(owner.http.get("/v1/notifications", params={"unread": "true"}))["items"]
    assert set(item) == {"id", "type", "title", "body", "data", "created_at", "read_at"}, item
    assert item["type"] == "booking.created" and item["read_at"] is None and item["data"]["id"] == booking["id"]
    assert booking["id"] in item["body"] and item["title"]
    [announced] = [e.envelope for e in events if e.event == "notification.created"]
    assert announced["channel"] == f"user:{owner.id}" and announced["data"]["id"] == item["id"]

    ok(owner.http.post(f"/v1/bookings/{booking['id']}/confirm"))
    assert (unread(customer), unread(owner)) == (1, 1)
    ok(admin.http.post(f"/v1/bookings/{booking['id']}/cancel"))
    assert (unread(customer), unread(owner)) == (2, 2)  # the admin acted: both are told
    customer_items = ok(customer.http.get("/v1/notifications", params={"unread": "true"}))["items"]
    assert [n["type"] for n in customer_items] == ["booking.cancelled", "booking.confirmed"]  # newest first

    read = ok(owner.http.post(f"/v1/notifications/{item['id']}/read"))
    assert read["id"] == item["id"] and read["read_at"] is not None
    assert unread(owner) == 1
    assert item["id"] in [n["id"] for n in ok(owner.http.get("/v1/notifications", params={"unread": "false"}))["items"]]
    assert item["id"] not in [n["id"] for n in ok(owner.http.get("/v1/notifications", params={"unread": "true"}))[
        "items"]]

    assert_problem(cast.other_customer.http.post(f"/v1/notifications/{item['id']}/read"), 404)
    assert_problem(customer.http.post(f"/v1/notifications/{item['id']}/read"), 404)
    assert_problem(owner.http.post(f"/v1/notifications/{uuid.uuid4()}/read"), 404)
    assert item["id"] not in [n["id"] for n in ok(cast.other_customer.http.get("/v1/notifications"))["items"]]

    assert ok(customer.http.post("/v1/notifications/read-all")) == {"unread": 0}
    assert unread(customer) == 0
    assert ok(customer.http.get("/v1/notifications", params={"unread": "true"}))["items"] == []
