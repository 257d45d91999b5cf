"""The SSE stream over a real connection: headers, framing, channels, replay, dedup."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
from conftest import ADMIN_EMAIL, ADMIN_PASSWORD, Cast, Server, make_booking, make_resource, running_api
from sse import open_stream


def test_stream_headers_retry_and_a_live_event(server: Server, cast: Cast) -> None:
    async def scenario() -> None:
        stream = await open_stream(f"{server.base_url}/v1/events/stream",
                                   {"Authorization": f"Bearer {cast.customer.token}"})
        assert stream.status == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["cache-control"] == "no-cache" and stream.headers["x-accel-buffering"] == "no"
        assert "connection" not in stream.headers and "content-encoding" not in stream.headers
        first = await stream.next()
        assert first is not None and first.retry == 3000
        answer = cast.admin.http.post("/v1/admin/announcements", json={"title": "Hello", "body": "line1\nline2"})
        assert answer.status_code == 202
        event = await stream.next()
        assert event is not None and event.event == "announcement" and event.id == answer.json()["id"]
        envelope = event.envelope
        assert envelope["channel"] == "broadcast" and envelope["data"]["body"] == "line1\nline2"
        stream.close()

    asyncio.run(scenario())


def test_booking_events_reach_customer_owner_and_admins_only(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.owner)

    async def scenario() -> None:
        streams = {name: await open_stream(f"{server.base_url}/v1/events/stream",
                                           {"Authorization": f"Bearer {getattr(cast, name).token}"})
                   for name in ("customer", "owner", "admin", "other_customer", "other_provider")}
        for stream in streams.values():
            await stream.next()  # retry:
        booking = make_booking(cast.customer, resource["id"])
        for name in ("customer", "owner", "admin"):
            seen = []
            while True:
                event = await streams[name].next(timeout=5)
                assert event is not None
                seen.append(event.event)
                if event.event == "booking.created":
                    assert event.envelope["data"]["id"] == booking["id"]
                    break
        for name in ("other_customer", "other_provider"):
            try:
                event = await streams[name].next(timeout=1)
            except TimeoutError:
                event = None
            assert event is None or not event.event.startswith("booking."), event
        for stream in streams.values():
            stream.close()

    asyncio.run(scenario())


def test_metrics_count_requests_streams_and_deliveries(server: Server, cast: Cast) -> None:
    async def scenario() -> str:
        stream = await open_stream(f"{server.base_url}/v1/events/stream",
                                   {"Authorization": f"Bearer {cast.customer.token}"})
        await stream.next()
        cast.admin.http.post("/v1/admin/announcements", json={"title": "M", "body": "m"})
        assert (await stream.next()) is not None
        text = cast.customer.http.get("/metrics").text
        stream.close()
        return text

    text = asyncio.run(scenario())
    assert 'bookwire_http_requests_total{method="POST",status="2xx"}' in text
    assert 'bookwire_open_streams{transport="sse"}' in text
    assert "bookwire_event_delivery_latency_seconds_bucket" in text
    published = next(line for line in text.splitlines() if line.startswith("bookwire_events_published_total "))
    assert float(published.split()[1]) >= 1
    assert "# TYPE bookwire_events_published_total counter" in text  # a monotonic count, not a gauge


def test_shutdown_tells_open_streams_before_closing(tmp_path: Path, redis_url: str) -> None:
    with running_api(tmp_path, redis_url) as (base_url, process):
        with httpx.Client(base_url=base_url) as client:
            token = client.post("/v1/auth/token", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}).json()

        async def scenario() -> None:
            stream = await open_stream(f"{base_url}/v1/events/stream",
                                       {"Authorization": f"Bearer {token['access_token']}"})
            await stream.next()
            process.send_signal(signal.SIGTERM)
            closing = await stream.next(timeout=5)
            assert closing is not None and closing.event == "stream.closing" and closing.id is None
            assert closing.envelope["data"] == {"reason": "shutdown"} and closing.envelope["channel"] is None
            assert await stream.next(timeout=5) is None  # then the server ends the stream

        asyncio.run(scenario())
        assert process.wait(timeout=10) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled


def test_a_client_that_leaves_is_forgotten_within_seconds(tmp_path: Path, redis_url: str) -> None:
    with running_api(tmp_path, redis_url) as (base_url, _):
        with httpx.Client(base_url=base_url) as client:
            token = client.post("/v1/auth/token", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}).json()
            admin = {"Authorization": f"Bearer {token['access_token']}"}

            def open_streams() -> int:
                count: int = client.get("/v1/admin/presence", headers=admin).json()["streams"]["sse"]
                return count

            async def scenario() -> None:
                streams = [await open_stream(f"{base_url}/v1/events/stream", admin) for _ in range(3)]
                for stream in streams:
                    await stream.next()
                assert open_streams() == 3
                for stream in streams:
                    stream.close()
                for _ in range(50):  # the hub's ticker notices within about a second
                    if open_streams() == 0:
                        return
                    await asyncio.sleep(0.1)
                raise AssertionError(f"{open_streams()} streams still counted after their clients left")

            asyncio.run(scenario())
