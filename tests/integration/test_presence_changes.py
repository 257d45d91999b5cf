"""`presence.changed` (SPEC "Conversations", "Events"), over real SSE streams against a running app
with a Redis of its own (presence is shared by every process of one deployment), on SQLite and
PostgreSQL: coming online and going offline (PRESENCE_OFFLINE_AFTER after the last connection: 30 s
by default, OFFLINE_AFTER here so the test does not wait half a minute) are told to the users who
share a pending, confirmed or checked-in booking with them, and to no one else; a reconnect within
it tells nobody anything (a reconnect storm costs no events)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import Server, fresh_database, make_booking, make_resource, register, running_api
from events import connect
from sse import SSEStream

from app.embedded_redis import EmbeddedRedis

OFFLINE_AFTER = 5  # PRESENCE_OFFLINE_AFTER of the API: longer than every quiet watch below, so none sees it expire
OFFLINE_WITHIN = OFFLINE_AFTER + 2 + 5  # TTL from the close, the expiry's round, slack


@pytest.fixture(params=["sqlite", "postgres"])
def private_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    redis = EmbeddedRedis(tmp_path / "redis", persist=False)
    redis_url = redis.start()
    try:
        with fresh_database(request.param, tmp_path) as database_url, \
                running_api(tmp_path, redis_url, database_url, PRESENCE_OFFLINE_AFTER=f"{OFFLINE_AFTER}s") as (url, _):
            yield Server(request.param, url, database_url, tmp_path)
    finally:
        redis.stop()


async def presence_events(stream: SSEStream, seconds: float,
                          until: Callable[[dict[str, Any]], bool] | None = None) -> list[dict[str, Any]]:
    """The `presence.changed` envelopes the stream receives within `seconds` (or up to the first for
    which `until` is true)."""
    found = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            event = await stream.next(left)
        except TimeoutError:
            break
        if event is None:
            break
        if event.event == "presence.changed":
            assert event.id is None, "presence is ephemeral: no id"
            found.append(event.envelope)
            if until is not None and until(event.envelope):
                break
    return found


def test_online_and_offline_reach_booking_counterparts_only(private_server: Server) -> None:
    server = private_server
    customer = register(server, "customer", "Carol Customer")
    provider = register(server, "provider", "Paula Provider")
    stranger = register(server, "customer", "Sam Stranger")
    make_booking(customer, make_resource(provider)["id"])  # pending: they share an active booking

    async def scenario() -> None:
        watching = await connect(server.base_url, provider.token)
        try:
            await watch(watching)
        finally:
            watching.close()

    async def watch(watching: SSEStream) -> None:
        await presence_events(watching, 1.0)  # the provider's own coming online tells the provider nothing
        arriving = await connect(server.base_url, customer.token)
        came = await presence_events(watching, 3.0)
        assert [(e["data"]["user_id"], e["data"]["online"]) for e in came] == [(customer.id, True)], came
        assert came[0]["channel"] == f"user:{provider.id}" and came[0]["data"]["last_seen_at"]

        outsider = await connect(server.base_url, stranger.token)  # no booking with the provider
        assert await presence_events(watching, 2.0) == []

        arriving.close()  # a reconnect within OFFLINE_AFTER: nothing to tell
        arriving = await connect(server.base_url, customer.token)
        assert await presence_events(watching, 2.0) == []

        arriving.close()
        outsider.close()
        closed_at, closed_wall = time.monotonic(), datetime.now(UTC)
        if server.engine != "sqlite":
            return  # going offline is the same Redis script on both engines: it is waited for once
        gone = await presence_events(watching, OFFLINE_WITHIN, until=lambda e: e["data"]["user_id"] == customer.id)
        after = time.monotonic() - closed_at
        about_customer = [e["data"] for e in gone if e["data"]["user_id"] == customer.id]
        assert [d["online"] for d in about_customer] == [False], gone
        assert all(e["data"]["user_id"] != stranger.id for e in gone), gone
        # OFFLINE_AFTER after the last connection closed (2 s expiry rounds), not after the stream's last refresh
        assert OFFLINE_AFTER - 0.5 <= after <= OFFLINE_AFTER + 2 + 3, f"offline announced {after:.1f} s after the close"
        seen_at = datetime.fromisoformat(about_customer[0]["last_seen_at"])
        assert abs((seen_at - closed_wall).total_seconds()) < 1.5, (seen_at, closed_wall)

    asyncio.run(scenario())
