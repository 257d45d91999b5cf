"""Real-time delivery under faults and load, against real processes (SPEC "Events").

- Two API processes on one Redis and one database: events published through either reach
  subscribers of both, and `GET /v1/admin/presence` on either counts the connections of both.
- Redis restarted under connected clients (AOF on, same port and data folder): the API recovers by
  itself, open streams keep receiving, a client resuming with its last id replays what it missed,
  and nothing published after Redis is back is lost — also when Redis is back within a second, while
  another process keeps publishing (a gap Redis clients can hide by resubscribing on their own).
- A subscriber that stops reading is disconnected once it is more than `SSE_QUEUE_SIZE` events
  behind, without slowing the others and without the API's memory growing.

Each test starts its own private Redis (never the session one), so presence counts are exact and
a restart disturbs nobody else. Every wait is bounded and every process is stopped in `finally`.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
from conftest import Actor, Server, bookwire, bookwire_env, register, running_api, sign_in_admin
from sse import SSEEvent, SSEStream, open_stream, open_stuck_stream, read_until_closed

from app.embedded_redis import EmbeddedRedis, free_port

T = TypeVar("T")

STREAM_PATH = "/v1/events/stream"
PAD = "x" * 20_000  # ~20 KB of data per flood event
QUEUE_SIZE = 50
BASELINE_EVENTS = 100
MIN_FLOOD_EVENTS = 400
RSS_GROWTH_LIMIT = 50 * 1024 * 1024
RESTART_DOWN_SECONDS = (0.3, 0.4, 0.5, 0.6, 0.3, 0.4, 0.5, 0.6)  # back before the clients' own retries give up
PRESENCE_LAG_LIMIT = 15.0  # processes refresh their share every 10 s (app.realtime.presence.REFRESH_SECONDS)


# --- processes -------------------------------------------------------------------------------------------


@contextmanager
def private_redis(data_dir: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of this test's own (no persistence), stopped on exit."""
    server = EmbeddedRedis(data_dir, persist=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def api(data_dir: Path, redis_url: str, database_url: str | None = None, migrate: bool = True,
        **env: str) -> Iterator[tuple[Server, subprocess.Popen[bytes]]]:
    """A `bookwire api` process on SQLite (by default a fresh file in `data_dir`)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    database_url = database_url or f"sqlite:///{data_dir / 'bookwire.sqlite3'}"
    with running_api(data_dir, redis_url, database_url, migrate=migrate, **env) as (base_url, process):
        yield Server("sqlite", base_url, database_url, data_dir), process


@contextmanager
def scheduler(data_dir: Path, redis_url: str) -> Iterator[subprocess.Popen[bytes]]:
    """An rq-scheduler on `redis_url` (what /ready looks for), stopped on exit."""
    data_dir.mkdir(parents=True, exist_ok=True)
    process = bookwire("scheduler", env=bookwire_env(REDIS_URL=redis_url, DATA_DIR=str(data_dir)),
                       log=data_dir / "scheduler.log")
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class RestartableRedis:
    """A Redis persisting with AOF on a fixed port, which can be stopped and started again on the same data."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.server: EmbeddedRedis | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.server = EmbeddedRedis(self.data_dir, port=self.port, persist=True)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()  # SIGTERM: Redis flushes its AOF before it exits
            self.server = None



def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


class RssSampler:
    """Samples a process's RSS in a thread while the `with` block runs; `peak` is the highest seen."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak = max(self.peak, rss_bytes(self.pid))


def log_tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a process's log, for failure messages."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else f"(no {path})"


def api_log(server: Server) -> str:
    return log_tail(server.data_dir / "api.log")


# --- HTTP helpers ----------------------------------------------------------------------------------------


def announce(http: httpx.Client, title: str, audience: str = "all") -> str:
    """Publish an announcement; its event id."""
    answer = http.post("/v1/admin/announcements", json={"title": title, "body": f"{title} body", "audience": audience})
    assert answer.status_code == 202, answer.text
    event_id: str = answer.json()["id"]
    return event_id


def publish(http: httpx.Client, event_type: str, channels: list[str], data: dict[str, Any]) -> str:
    """Publish a custom event (`POST /v1/events`); its event id."""
    answer = http.post("/v1/events", json={"type": event_type, "channels": channels, "data": data})
    assert answer.status_code == 202, answer.text
    event_id: str = answer.json()["id"]
    return event_id


def presence(http: httpx.Client) -> dict[str, Any]:
    answer = http.get("/v1/admin/presence")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def presence_is(http: httpx.Client, want: dict[str, Any]) -> Callable[[], dict[str, Any] | None]:
    """A check for `eventually`: the presence answer when it equals `want`."""

    def check() -> dict[str, Any] | None:
        seen = presence(http)
        return seen if seen == want else None

    return check


def expected_presence(customer: int = 0, provider: int = 0, admin: int = 0, sse: int = 0,
                      poll: int = 0) -> dict[str, Any]:
    return {"online": {"customer": customer, "provider": provider, "admin": admin},
            "streams": {"sse": sse, "poll": poll}}


def ready(http: httpx.Client) -> tuple[int, dict[str, Any]]:
    answer = http.get("/ready", timeout=10)
    body: dict[str, Any] = answer.json()
    return answer.status_code, body


async def eventually(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.2) -> T:
    """The first non-None result of `check()` within `timeout` seconds (blocking checks run in a thread)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = await asyncio.to_thread(check)
        except (httpx.HTTPError, AssertionError) as exc:
            result, last = None, exc
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")
        await asyncio.sleep(interval)


# --- SSE helpers -----------------------------------------------------------------------------------------


async def subscribe(server: Server, token: str, last_event_id: str | None = None) -> SSEStream:
    """An open SSE stream, past its `retry:` frame."""
    headers = {"Authorization": f"Bearer {token}"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    stream = await open_stream(server.base_url + STREAM_PATH, headers)
    assert stream.status == 200, (stream.status, stream.body)
    first = await stream.next(timeout=5)
    assert first is not None and first.retry is not None, first
    return stream


async def take(stream: SSEStream, count: int, timeout: float = 10.0) -> list[SSEEvent]:
    """Exactly the next `count` events (heartbeats skipped), within `timeout` seconds in all."""
    got: list[SSEEvent] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        try:
            event = await stream.next(timeout=max(deadline - time.monotonic(), 0.01))
        except TimeoutError:
            raise AssertionError(f"{len(got)} of {count} events within {timeout} s: {ids(got)}") from None
        assert event is not None, f"stream closed after {len(got)} of {count} events: {ids(got)}"
        if event.retry is not None and not event.data:
            continue
        got.append(event)
    return got


async def resubscribe(server: Server, token: str, last_event_id: str, deadline: float) -> SSEStream:
    """Open the stream again from `last_event_id`, retrying (as a browser does) until `deadline`."""
    while True:
        try:
            return await subscribe(server, token, last_event_id)
        except (OSError, AssertionError, TimeoutError) as exc:
            if time.monotonic() >= deadline:
                raise AssertionError(f"could not reconnect from {last_event_id}: {exc!r}") from None
            await asyncio.sleep(0.3)


async def take_resuming(stream: SSEStream, server: Server, token: str, last_event_id: str, count: int,
                        timeout: float) -> tuple[SSEStream, list[SSEEvent]]:
    """`count` events; when the server ends the stream, reconnect with the last id seen, as a browser does."""
    got: list[SSEEvent] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        try:
            event = await stream.next(timeout=max(deadline - time.monotonic(), 0.01))
        except TimeoutError:
            raise AssertionError(f"{len(got)} of {count} events within {timeout} s: {ids(got)}") from None
        if event is None:  # closed by the server
            await asyncio.sleep(0.3)
            stream = await resubscribe(server, token, got[-1].id if got and got[-1].id else last_event_id, deadline)
            continue
        if (event.retry is not None and not event.data) or event.event == "stream.closing":
            continue
        got.append(event)
    return stream, got


def ids(events: list[SSEEvent]) -> list[str | None]:
    return [e.id for e in events]


# --- 1. several API processes ----------------------------------------------------------------------------


def test_two_api_processes_share_events_and_presence(tmp_path: Path) -> None:
    with (
        private_redis(tmp_path / "redis") as redis_server,
        api(tmp_path / "a", redis_server.url) as (a, _),
        api(tmp_path / "b", redis_server.url, database_url=a.database_url, migrate=False) as (b, _),
    ):
        customer1, customer2 = register(a, "customer"), register(a, "customer")
        provider = register(b, "provider")  # the database is shared: registered on B, usable on A
        admin_a = sign_in_admin(a)
        admin_b = Actor(admin_a.id, "admin", admin_a.email, admin_a.token, b.client(admin_a.token))
        asyncio.run(_two_processes(a, b, customer1, customer2, provider, admin_a, admin_b))


async def _two_processes(a: Server, b: Server, customer1: Actor, customer2: Actor, provider: Actor,
                         admin_a: Actor, admin_b: Actor) -> None:
    on_a = [await subscribe(a, customer1.token), await subscribe(a, customer2.token)]
    on_b = await subscribe(b, provider.token)
    try:
        from_b = announce(admin_b.http, "Published through B")
        from_a = announce(admin_a.http, "Published through A")
        to_provider = publish(admin_a.http, "test.cross_process", [f"user:{provider.id}"], {"via": "a"})
        to_customers = publish(admin_b.http, "test.cross_process", ["role:customer"], {"via": "b"})
        for stream in on_a:
            events = await take(stream, 3)
            assert ids(events) == [from_b, from_a, to_customers], events
            assert [e.envelope["channel"] for e in events] == ["broadcast", "broadcast", "role:customer"]
        events = await take(on_b, 3)
        assert ids(events) == [from_b, from_a, to_provider], events
        assert events[2].envelope["channel"] == f"user:{provider.id}"
        assert events[2].envelope["data"] == {"via": "a"}

        # A long-poll held on A counts as a poll stream, on both processes.
        cursor = customer1.http.get("/v1/events/poll").json()["cursor"]
        held = asyncio.create_task(asyncio.to_thread(
            customer1.http.get, "/v1/events/poll", params={"cursor": cursor, "timeout": 30}, timeout=40))
        try:
            want = expected_presence(customer=2, provider=1, sse=3, poll=1)
            # B first: it knows A's share only from what A last wrote to Redis.
            await eventually(presence_is(admin_b.http, want), PRESENCE_LAG_LIMIT, f"presence on B == {want}", 0.5)
            await eventually(presence_is(admin_a.http, want), PRESENCE_LAG_LIMIT, f"presence on A == {want}", 0.5)
            # An event published through B releases the poll held on A.
            released_by = announce(admin_b.http, "Wake the poll")
            answer = await asyncio.wait_for(held, timeout=10)
        finally:
            if not held.done():
                held.cancel()
        assert answer.status_code == 200, answer.text
        assert [e["id"] for e in answer.json()["events"]] == [released_by], answer.text
        assert answer.json()["cursor"] == released_by
        assert presence(admin_a.http)["streams"]["poll"] == 0  # A's own share is exact at once
    finally:
        for stream in [*on_a, on_b]:
            stream.close()


# --- 2. Redis restarted under connected clients ----------------------------------------------------------


def test_redis_restart_under_connected_clients(tmp_path: Path) -> None:
    redis_server = RestartableRedis(tmp_path / "redis")
    redis_server.start()
    try:
        with (
            scheduler(tmp_path / "scheduler", redis_server.url) as scheduler_process,
            api(tmp_path / "api", redis_server.url) as (server, process),
        ):
            customer = register(server, "customer")
            admin = sign_in_admin(server)
            asyncio.run(_redis_restart(server, customer, admin, redis_server))
            assert process.poll() is None, "the API process died:\n" + api_log(server)
            # /ready's 200 only means something if the scheduler it counts is still running: its
            # registration outlives a crash by up to 11 s (rq-scheduler's key TTL).
            assert scheduler_process.poll() is None, (
                f"the scheduler exited ({scheduler_process.returncode}) when Redis restarted:\n"
                + log_tail(tmp_path / "scheduler" / "scheduler.log", 8)
            )
    finally:
        redis_server.stop()


async def _redis_restart(server: Server, customer: Actor, admin: Actor, redis_server: RestartableRedis) -> None:
    def fully_ready() -> tuple[int, dict[str, Any]] | None:
        status, body = ready(admin.http)
        return (status, body) if status == 200 else None

    await eventually(fully_ready, 15, "/ready is 200 before the restart")
    live = await subscribe(server, customer.token)  # kept across the restart (reconnects only if the server ends it)
    leaver = await subscribe(server, customer.token)  # leaves, comes back with its last id
    streams = [live, leaver]
    try:
        before = [announce(admin.http, f"before {n}") for n in range(3)]
        assert ids(await take(live, 3)) == before
        assert ids(await take(leaver, 3)) == before
        leaver.close()
        missed = [announce(admin.http, f"missed {n}") for n in range(2)]
        assert ids(await take(live, 2)) == missed

        await asyncio.to_thread(redis_server.stop)
        down_since = time.monotonic()
        assert (await asyncio.to_thread(admin.http.get, "/health")).status_code == 200  # the process lives on
        status, body = await asyncio.to_thread(ready, admin.http)
        assert status == 503 and body["checks"]["redis"] is False, (status, body)
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - down_since)))
        await asyncio.to_thread(redis_server.start)

        def redis_and_database_ok() -> dict[str, Any] | None:
            _, body = ready(admin.http)
            return body if body["checks"]["database"] and body["checks"]["redis"] else None

        await eventually(redis_and_database_ok, 15, "/ready sees the database and Redis again")
        after = [announce(admin.http, f"after {n}") for n in range(3)]

        live, got_live = await take_resuming(live, server, customer.token, missed[-1], 3, timeout=15)
        streams.append(live)
        assert ids(got_live) == after, f"live stream after the restart: {ids(got_live)}\n{api_log(server)}"

        leaver = await subscribe(server, customer.token, last_event_id=before[-1])
        streams.append(leaver)
        replayed = await take(leaver, 5)
        assert ids(replayed) == missed + after, f"replay after the restart: {ids(replayed)}"

        final = announce(admin.http, "final")
        assert ids(await take(live, 1)) == [final]
        assert ids(await take(leaver, 1)) == [final]

        status, body = await eventually(fully_ready, 15, "/ready is 200 again (database, Redis, scheduler)")
        assert status == 200 and all(body["checks"].values()), body
    finally:
        for stream in streams:
            stream.close()


class BackgroundPublisher:
    """Publishes custom `broadcast` events through one API in a thread, as fast as it answers, until stopped.

    `published` holds the ids of the publishes that were answered 202; the others (during an outage)
    may or may not have happened, so nothing is expected of them."""

    def __init__(self, server: Server, token: str) -> None:
        self.http = server.client(token)
        self.published: list[str] = []
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        seq = 0
        while not self._stop.is_set():
            seq += 1
            try:
                answer = self.http.post("/v1/events", timeout=10,
                                        json={"type": "test.restart", "channels": ["broadcast"], "data": {"seq": seq}})
                answer.raise_for_status()
                self.published.append(answer.json()["id"])
            except httpx.HTTPError:
                self.failed += 1
            self._stop.wait(0.002)

    def __enter__(self) -> BackgroundPublisher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        self.http.close()


def test_fast_redis_restarts_lose_no_event_across_processes(tmp_path: Path) -> None:
    redis_server = RestartableRedis(tmp_path / "redis")
    redis_server.start()
    try:
        with (
            api(tmp_path / "a", redis_server.url) as (a, _),
            api(tmp_path / "b", redis_server.url, database_url=f"sqlite:///{tmp_path / 'a' / 'bookwire.sqlite3'}",
                migrate=False) as (b, _),
        ):
            customer = register(a, "customer")
            admin = sign_in_admin(b)
            asyncio.run(_fast_restarts(a, b, customer, admin, redis_server))
    finally:
        redis_server.stop()


async def _fast_restarts(a: Server, b: Server, customer: Actor, admin: Actor, redis_server: RestartableRedis) -> None:
    stream = await subscribe(a, customer.token)  # on A; everything is published through B
    try:
        with BackgroundPublisher(b, admin.token) as publisher:
            for down_seconds in RESTART_DOWN_SECONDS:
                await asyncio.sleep(0.3)
                await asyncio.to_thread(redis_server.stop)
                await asyncio.sleep(down_seconds)
                await asyncio.to_thread(redis_server.start)
            await asyncio.sleep(1.5)  # publishing goes on after the last restart
        published = publisher.published
        assert len(published) > 50, f"only {len(published)} publishes succeeded ({publisher.failed} failed)"
        received: list[str] = []
        deadline = time.monotonic() + 10
        while published[-1] not in received[-1:] and time.monotonic() < deadline:  # in order: the last one ends it
            try:
                event = await stream.next(timeout=max(deadline - time.monotonic(), 0.01))
            except TimeoutError:
                break
            assert event is not None, f"the stream on A was closed\n{api_log(a)}"
            if event.event == "test.restart" and event.id is not None:
                received.append(event.id)
        seen = set(received)
        missing = [event_id for event_id in published if event_id not in seen]
        if missing:  # were they stored at all? A stream resuming from before them tells.
            history = set(await read_history(a, customer.token, published[0], published[-1]))
            stored = sum(event_id in history for event_id in missing)
            raise AssertionError(
                f"{len(missing)} of {len(published)} events published through B never reached the live stream on A "
                f"({stored} of them are in the history a resuming client replays): {missing[:10]}\n{api_log(a)}")
        assert len(received) == len(seen), "an event was delivered twice"
        assert sorted(received, key=event_order) == received, "events arrived out of order"
    finally:
        stream.close()


async def read_history(server: Server, token: str, after: str, until: str, timeout: float = 10) -> list[str]:
    """The ids a client resuming from `after` receives, up to `until`."""
    stream = await subscribe(server, token, last_event_id=after)
    got: list[str] = []
    try:
        while until not in got[-1:]:
            event = (await take(stream, 1, timeout))[0]
            if event.id is not None:
                got.append(event.id)
    finally:
        stream.close()
    return got


def event_order(event_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = event_id.partition("-")
    return int(milliseconds), int(sequence)


# --- 3. a subscriber that stops reading ------------------------------------------------------------------


def test_slow_subscriber_is_dropped_without_slowing_others(tmp_path: Path) -> None:
    with (
        private_redis(tmp_path / "redis") as redis_server,
        api(tmp_path / "api", redis_server.url, SSE_QUEUE_SIZE=str(QUEUE_SIZE)) as (server, process),
    ):
        admin = sign_in_admin(server)
        reader, laggard = register(server, "customer"), register(server, "customer")
        asyncio.run(_slow_subscriber(server, process, admin, reader, laggard))


def publish_many(http: httpx.Client, phase: str, count: int, sent_at: dict[int, float]) -> list[str]:
    """Publish `count` ~20 KB events to role:customer one after another, noting when each was sent."""
    published = []
    for seq in range(count):
        sent_at[seq] = time.monotonic()
        published.append(publish(http, "test.flood", ["role:customer"], {"phase": phase, "seq": seq, "pad": PAD}))
    return published


async def flood(stream: SSEStream, http: httpx.Client, phase: str, count: int) -> list[float]:
    """Publish `count` events while `stream` reads them; the per-event latencies (publish → received)."""
    sent_at: dict[int, float] = {}
    publisher = asyncio.create_task(asyncio.to_thread(publish_many, http, phase, count, sent_at))
    received: list[str] = []
    latencies: list[float] = []
    deadline = time.monotonic() + 30
    try:
        while len(received) < count:
            try:
                event = await stream.next(timeout=max(deadline - time.monotonic(), 0.01))
            except TimeoutError:
                raise AssertionError(f"{phase}: {len(received)} of {count} events received in time") from None
            assert event is not None, f"{phase}: the reading subscriber was disconnected after {len(received)}"
            if event.event != "test.flood":
                continue
            now = time.monotonic()
            data = event.envelope["data"]
            assert (data["phase"], data["seq"]) == (phase, len(received)), "out of order or missing"
            latencies.append(now - sent_at[data["seq"]])
            assert event.id is not None
            received.append(event.id)
        published = await asyncio.wait_for(publisher, timeout=30)
    finally:
        if not publisher.done():
            publisher.cancel()
    assert received == published
    return latencies


def flood_size() -> int:
    """Enough events to fill the stuck connection's socket buffers and then its queue, with a margin."""
    try:
        send_buffer_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        send_buffer_max = 4 * 2**20
    return max(MIN_FLOOD_EVENTS, send_buffer_max // len(PAD) + 2 * QUEUE_SIZE + 100)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


async def _slow_subscriber(server: Server, process: subprocess.Popen[bytes], admin: Actor, reader: Actor,
                           laggard: Actor) -> None:
    stream = await subscribe(server, reader.token)
    stuck: socket.socket | None = None
    try:
        baseline = p99(await flood(stream, admin.http, "baseline", BASELINE_EVENTS))

        stuck = await asyncio.to_thread(open_stuck_stream, server.base_url, laggard.token)
        count = flood_size()
        assert presence(admin.http)["streams"]["sse"] == 2
        rss_before = rss_bytes(process.pid)
        with RssSampler(process.pid) as sampler:
            latencies = await flood(stream, admin.http, "flood", count)
        flooded = p99(latencies)
        limit = max(0.2, 5 * baseline)
        assert flooded <= limit, (f"p99 latency {flooded * 1000:.0f} ms with a stuck subscriber "
                                  f"(baseline {baseline * 1000:.0f} ms, limit {limit * 1000:.0f} ms)")
        growth = sampler.peak - rss_before
        assert growth <= RSS_GROWTH_LIMIT, f"API RSS grew by {growth / 2**20:.1f} MiB during the flood"

        def one_sse_stream() -> dict[str, Any] | None:
            seen = presence(admin.http)
            return seen if seen["streams"]["sse"] == 1 else None

        await eventually(one_sse_stream, 5, "the stuck stream is dropped (presence counts one SSE stream)")
        closed, read = await asyncio.to_thread(read_until_closed, stuck, 10)
        assert closed, f"the stuck connection was not closed ({read} bytes read)\n{api_log(server)}"
        assert read < count * len(PAD), f"the stuck connection received all {read} bytes"

        # The reading subscriber is still live after the drop.
        last = announce(admin.http, "still there")
        assert ids(await take(stream, 1)) == [last]
    finally:
        stream.close()
        if stuck is not None:
            stuck.close()
