"""Limits on event connections, driven over HTTP against live API processes.

- One user may hold at most `MAX_STREAMS_PER_USER` event connections per API process (streams and
  held long-polls alike); one more is a 429 problem document with `Retry-After`, before any stream
  starts.
- A subscriber dropped for falling more than `SSE_QUEUE_SIZE` events behind has its socket closed
  at once, with its backlog discarded: it does not get thousands of stale events when it reads.
- A stream that opens while its user is being deactivated still ends with `stream.closing`
  (`deactivated`), however the two interleave.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    Cast,
    Server,
    assert_problem,
    make_resource,
    register,
    running_api,
)
from events import bearer, connect, publish, stream_url
from sse import SSEStream, open_stream, open_stuck_stream, read_until_closed

LIMIT = 3
QUEUE_SIZE = 5
PAD = "x" * 100_000  # ~100 KB per flood event


def flood_events() -> int:
    """Enough events to fill the kernel's send buffer for the stuck client (it grows up to
    tcp_wmem's maximum before the server sees any back-pressure), then the queue, with a margin."""
    try:
        send_buffer_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        send_buffer_max = 4 * 2**20
    return send_buffer_max // len(PAD) + QUEUE_SIZE + 40


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Server]:
    """An API process of this module's own with a small per-user limit and a small SSE queue."""
    data_dir = tmp_path_factory.mktemp("limited-api")
    with running_api(data_dir, redis_url, MAX_STREAMS_PER_USER=str(LIMIT),
                     SSE_QUEUE_SIZE=str(QUEUE_SIZE)) as (url, _):
        yield Server("sqlite", url, f"sqlite:///{data_dir / 'bookwire.sqlite3'}", data_dir)


def admin_client(server: Server) -> httpx.Client:
    with server.client() as client:
        token = client.post("/v1/auth/token", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}).json()
    return server.client(token["access_token"])


def assert_over_the_limit(answer: httpx.Response) -> None:
    body = assert_problem(answer, 429)
    assert "MAX_STREAMS_PER_USER" in body["detail"], body
    assert int(answer.headers["retry-after"]) >= 1, answer.headers


async def refused_stream(base_url: str, token: str) -> None:
    """Open one stream too many: a 429 problem document before any stream starts."""
    stream = await open_stream(stream_url(base_url), bearer(token))
    assert stream.status == 429, (stream.status, stream.body)
    assert stream.headers["content-type"].startswith("application/problem+json"), stream.headers
    assert int(stream.headers["retry-after"]) >= 1, stream.headers
    assert b"MAX_STREAMS_PER_USER" in stream.body, stream.body


def test_streams_and_held_polls_over_the_per_user_limit_are_429(limited: Server) -> None:
    user, other = register(limited, "customer"), register(limited, "customer")
    cursor = user.http.get("/v1/events/poll").json()["cursor"]

    async def scenario() -> None:
        streams = [await connect(limited.base_url, user.token) for _ in range(LIMIT)]
        await refused_stream(limited.base_url, user.token)
        assert_over_the_limit(await asyncio.to_thread(
            user.http.get, "/v1/events/poll", params={"cursor": cursor, "timeout": 5}))
        others = await connect(limited.base_url, other.token)  # the limit is per user

        streams.pop().close()  # the ticker notices the departure within about a second
        deadline = time.monotonic() + 5
        while True:
            stream = await open_stream(stream_url(limited.base_url), bearer(user.token))
            if stream.status == 200:
                streams.append(stream)
                break
            assert stream.status == 429 and time.monotonic() < deadline, (stream.status, stream.body)
            await asyncio.sleep(0.2)

        # A held long-poll counts as one connection: with LIMIT - 1 streams and it, the user is full.
        streams.pop().close()
        await asyncio.sleep(1.5)
        held = asyncio.create_task(asyncio.to_thread(
            user.http.get, "/v1/events/poll", params={"cursor": cursor, "timeout": 4}))
        await asyncio.sleep(0.5)
        await refused_stream(limited.base_url, user.token)
        answer = await held
        assert answer.status_code == 200 and answer.json()["events"] == [], answer.text
        for stream in [*streams, others]:
            stream.close()

    asyncio.run(scenario())


def test_a_dropped_slow_subscriber_is_disconnected_at_once_and_others_keep_receiving(limited: Server) -> None:
    reader, laggard = register(limited, "customer"), register(limited, "customer")
    admin = admin_client(limited)
    channels = [f"user:{reader.id}", f"user:{laggard.id}"]
    count = flood_events()

    async def scenario() -> tuple[list[str], list[str]]:
        stream = await connect(limited.base_url, reader.token)
        stuck = await asyncio.to_thread(open_stuck_stream, limited.base_url, laggard.token)
        try:
            published: list[str] = []

            def flood() -> None:
                for seq in range(count):
                    published.append(publish(admin, "test.flood", channels, {"seq": seq, "pad": PAD}))

            publisher = threading.Thread(target=flood)
            publisher.start()
            received = await read_flood(stream, count)
            await asyncio.to_thread(publisher.join, 30)
            # The stuck client reads only now: the server must already have reset its connection,
            # so it gets at most what its own small receive buffer held, not the backlog.
            closed, read = await asyncio.to_thread(read_until_closed, stuck, 5)
            assert closed, f"the dropped subscriber's socket is still open ({read} bytes read)"
            assert read < 200_000, f"the dropped subscriber still received {read} bytes of stale events"
            return received, published
        finally:
            stream.close()
            stuck.close()

    received, published = asyncio.run(scenario())
    assert received == published  # the reader got every event, in order
    log = (limited.data_dir / "api.log").read_text()
    assert "returned without completing response" not in log, "the dropped stream did not end cleanly"


async def read_flood(stream: SSEStream, count: int) -> list[str]:
    ids: list[str] = []
    deadline = time.monotonic() + 60
    while len(ids) < count:
        event = await stream.next(timeout=max(deadline - time.monotonic(), 0.01))
        assert event is not None, f"the reading subscriber was disconnected after {len(ids)} events"
        if event.event == "test.flood":
            assert event.id is not None
            ids.append(event.id)
    return ids


OPENERS = 16  # under the default MAX_STREAMS_PER_USER (20), as a real deployment has it
ROUNDS = 4  # the race is narrow: each round is another chance for a stream to slip past the close


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_streams_opening_during_a_deactivation_all_end_deactivated(server: Server, cast: Cast, round_: int) -> None:
    user = register(server, "customer")
    # A topic makes the stream check a resource in the database between reading the account and
    # joining the hub: a wider window for the deactivation to land in.
    topic = f"resource:{make_resource(cast.owner)['id']}"

    async def open_and_follow(delay: float) -> dict[str, Any]:
        await asyncio.sleep(delay)
        stream = await open_stream(stream_url(server.base_url, topics=topic), bearer(user.token))
        if stream.status != 200:
            return {"status": stream.status}
        try:
            started = time.monotonic()
            while True:
                event = await stream.next(timeout=max(started + 5 - time.monotonic(), 0.01))
                if event is None:
                    return {"status": 200, "ended": "without stream.closing"}
                if event.event == "stream.closing":
                    return {"status": 200, "ended": event.envelope["data"]["reason"],
                            "after": time.monotonic() - started}
        except TimeoutError:
            return {"status": 200, "ended": "still open after 5 s"}
        finally:
            stream.close()

    async def scenario() -> list[dict[str, Any]]:
        openers = [asyncio.create_task(open_and_follow(i * 0.01)) for i in range(OPENERS)]
        await asyncio.sleep(OPENERS * 0.01 / 2)
        async with httpx.AsyncClient(base_url=server.base_url, headers=bearer(cast.admin.token)) as admin:
            answer = await admin.patch(f"/v1/users/{user.id}", json={"active": False})
            assert answer.status_code == 200, answer.text
        return await asyncio.gather(*openers)

    outcomes = asyncio.run(scenario())
    opened = [o for o in outcomes if o["status"] == 200]
    assert opened, outcomes
    assert all(o["status"] in (200, 401) for o in outcomes), outcomes
    missed = [o for o in opened if o["ended"] != "deactivated" or o["after"] >= 3]
    assert not missed, f"{len(missed)} of {len(opened)} streams missed the deactivation: {missed}"
