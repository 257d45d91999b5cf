"""Helpers for tests of the event endpoints: open SSE streams, publish, poll, and read until a mark.

Negative checks ("nobody else got it") never sleep: after the events under test, an admin publishes
a `test.mark` event to `broadcast`, which every connection reads; since a connection receives events
in one total order, whatever it was going to receive has arrived by the time the mark does.
"""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import pytest
from conftest import TEST_JWT_SECRET, Actor
from sse import SSEEvent, SSEStream, open_stream

RETRY_MS = 3000
ENVELOPE_FIELDS = {"id", "type", "channel", "occurred_at", "data"}





def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def id_key(event_id: str) -> tuple[int, int]:
    """Sort key of an event id (`<ms>-<seq>`)."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq)


def stream_url(base_url: str, **query: str) -> str:
    """The stream's URL with these query parameters (empty ones left out)."""
    query = {name: value for name, value in query.items() if value}
    return f"{base_url}/v1/events/stream" + (f"?{urlencode(query)}" if query else "")


async def connect(base_url: str, token: str | None = None, headers: dict[str, str] | None = None,
                  **query: str) -> SSEStream:
    """Open an SSE stream (token in the header unless None), check status and headers, consume `retry:`."""
    all_headers = {**(bearer(token) if token else {}), **(headers or {})}
    stream = await open_stream(stream_url(base_url, **query), all_headers)
    assert stream.status == 200, (stream.status, stream.body)
    assert "content-encoding" not in stream.headers, stream.headers  # open_stream sends Accept-Encoding: gzip, br
    first = await stream.next()
    assert first is not None and first.retry == RETRY_MS and not first.data, first
    assert bytes(stream.raw).startswith(b"retry:"), bytes(stream.raw[:40])
    return stream


def check_envelope(event: SSEEvent) -> dict[str, Any]:
    """The event's envelope, after checking it agrees with the SSE `id:` and `event:` lines."""
    envelope: dict[str, Any] = event.envelope
    assert set(envelope) == ENVELOPE_FIELDS, envelope
    assert envelope["id"] == event.id and envelope["type"] == event.event, (event, envelope)
    return envelope


async def read_until(stream: SSEStream, last_id: str, timeout: float = 10.0) -> list[SSEEvent]:
    """Every event (heartbeats skipped) up to and including the one whose id is `last_id`."""
    deadline = time.monotonic() + timeout
    got: list[SSEEvent] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"event {last_id} did not arrive within {timeout} s; last ids {[e.id for e in got][-5:]}")
        try:
            event = await stream.next(remaining)
        except TimeoutError:
            continue
        assert event is not None, f"the stream ended before {last_id}; got {[e.event for e in got]}"
        if event.retry is not None and not event.data:
            continue
        got.append(event)
        if event.id == last_id:
            return got


async def next_real(stream: SSEStream, timeout: float = 5.0) -> SSEEvent | None:
    """The next event that is not a heartbeat (None once the server closed the stream)."""
    return await stream.next(timeout)


def publish_body(event_type: str, channels: list[str], data: dict[str, Any] | None,
                 dedup_key: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"type": event_type, "channels": channels, "data": data or {}}
    if dedup_key is not None:
        body["dedup_key"] = dedup_key
    return body


def published_id(answer: httpx.Response) -> str:
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["deduplicated"] is False, body
    event_id: str = body["id"]
    return event_id


def publish(client: httpx.Client, event_type: str, channels: list[str], data: dict[str, Any] | None = None,
            dedup_key: str | None = None) -> str:
    """POST /v1/events; the new event's id."""
    return published_id(client.post("/v1/events", json=publish_body(event_type, channels, data, dedup_key)))


async def apublish(client: httpx.AsyncClient, event_type: str, channels: list[str],
                   data: dict[str, Any] | None = None) -> str:
    return published_id(await client.post("/v1/events", json=publish_body(event_type, channels, data, None)))


def outbox_settled(client: httpx.Client, timeout: float = 10.0) -> None:
    """Wait until the outbox is empty: every change committed so far has been published.

    A change's events go out through the outbox a moment after its response; an event published
    directly (`POST /v1/events`) goes out at once, so a test that wants it after a change's events
    waits for this first."""
    deadline = time.monotonic() + timeout
    while True:
        text = client.get("/metrics/cluster").text
        backlog = next(float(line.split()[-1]) for line in text.splitlines()
                       if line.startswith("bookwire_cluster_outbox_backlog "))
        if backlog == 0:
            return
        assert time.monotonic() < deadline, f"the outbox still holds {backlog:.0f} rows after {timeout} s"
        time.sleep(0.01)


def mark(admin: Actor) -> str:
    """Publish a `test.mark` event that every connection reads, after every committed change's
    events; its id."""
    outbox_settled(admin.http)
    return publish(admin.http, "test.mark", ["broadcast"], {"mark": uuid.uuid4().hex})


async def settle(streams: list[SSEStream], admin: Actor) -> None:
    """Wait until every stream has received what was published so far (and throw it away)."""
    last = mark(admin)
    for stream in streams:
        await read_until(stream, last)


async def events_until_mark(stream: SSEStream, last: str) -> list[SSEEvent]:
    """The events before the mark `last` (the mark itself excluded), each envelope checked."""
    events = await read_until(stream, last)
    for event in events:
        check_envelope(event)
    return events[:-1]


def poll_cursor(actor: Actor) -> str:
    """The actor's long-poll cursor now: `events_since` reads what is published after it."""
    answer = poll(actor.http, timeout=0)
    assert answer.status_code == 200, answer.text
    cursor: str = answer.json()["cursor"]
    return cursor


def events_since(actor: Actor, cursor: str, admin: Actor, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Every event the actor's long-poll reads after `cursor`, up to a `test.mark` that `admin`
    publishes now (after every committed change's events), so nothing that was going to arrive is
    missing; the mark itself left out."""
    last = mark(admin)
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not any(e["id"] == last for e in events):
        assert time.monotonic() < deadline, f"the mark {last} did not come within {timeout} s: {events}"
        body = ok(poll(actor.http, cursor=cursor, timeout=2))
        assert not [e for e in body["events"] if e["type"] == "stream.reset"], body
        events += body["events"]
        cursor = body["cursor"]
    return [e for e in events if e["id"] != last]


def ok(answer: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    body: dict[str, Any] = answer.json()
    return body


def poll(client: httpx.Client, **params: Any) -> httpx.Response:
    return client.get("/v1/events/poll", params=params)


def stream_token(actor: Actor) -> str:
    token: str = ok(actor.http.post("/v1/auth/stream-token"))["token"]
    return token


def service_token(scope: str = "events:publish") -> str:
    now = int(time.time())
    claims = {"sub": f"integrator-{uuid.uuid4().hex[:8]}", "scope": scope, "iss": "bookwire", "aud": "bookwire",
              "iat": now, "exp": now + 300}
    return jwt.encode(claims, TEST_JWT_SECRET, algorithm="HS256")


def assert_clean_framing(raw: bytes) -> None:
    """Every block on the wire holds only `id`/`event`/`data`/`retry` fields (each at most once) or comments."""
    assert b"\r" not in raw and b"\x00" not in raw, raw
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        names = [line.partition(":")[0] for line in block.split("\n") if not line.startswith(":")]
        assert set(names) <= {"id", "event", "data", "retry"}, block
        assert len(names) == len(set(names)), block


def own_channels(actor: Actor) -> list[str]:
    return [f"user:{actor.id}", f"role:{actor.role}", "broadcast"]
