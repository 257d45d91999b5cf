"""The transactional outbox under faults, with real processes (SPEC "Events": "Every committed change
reaches its subscribers ... once Redis is back, within 2 seconds. Events of one booking are published
in the order of its version"; SPEC "Reminders": "fires exactly once in effect").

Every test starts its own Redis, its own `bookwire api` processes (and workers, scheduler) and kills
them with SIGKILL, never politely; each counts lost and duplicated events:

1. Redis stopped while 20 booking changes go through API process A: each answers 2xx, a long-poll
   on process B never answers 500, and once Redis is back every event reaches both parties' SSE
   streams and the customer's long-poll on B once, in version order per booking.
2. API process A SIGKILLed in the middle of a burst of concurrent changes spread over A and B (its
   link to Redis cut just before, so its last commits can only go out through B's relay): every
   change answered 2xx has exactly one event in the global history, and every booking in the
   database has exactly the events of its versions 1..version, once each, in order.
3. The worker SIGKILLed while it fires a burst of reminders, once as the firing job starts (before
   its claim commits) and once right after the claim committed: every reminder ends `sent` with
   exactly one `reminder.due` event, one notification (and its `notification.created`) and one
   email.
4. SMTP down while bookings are made, then back: every email is accepted exactly once.

How each would fail on the old design (events published after the commit, outside the transaction):
1: publishing to a Redis that is down either fails the request after its commit (a 5xx for a change
   that happened) or drops the event; either way events are missing after Redis is back.
2: a change A committed but had not published (no Redis link, then killed) is never published by
   anyone: its versions are missing from the history.
3: a worker killed between the claim (`sent`) and publishing/notifying/mailing loses those for good
   (the reminder is no longer `scheduled`, so the sweep never fires it again).
4: not outbox-specific (the email jobs ride the outbox, the retries do not): it guards the retry path
   that the outbox now feeds, and would fail if a delivery's job were lost or run twice.

Every wait is bounded and every process is stopped in `finally` blocks (SIGKILLed ones included).
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import test_email_workers as email_workers
from conftest import (
    Actor,
    Server,
    at,
    bookwire_env,
    fresh_database,
    make_resource,
    register,
    running_api,
    sign_in_admin,
)
from events import mark, outbox_settled
from proxy import TcpProxy
from redis import Redis
from rq import Queue
from sse import SSEStream
from test_email_workers import Sink, sigkill_tree
from test_events_faults import RestartableRedis, log_tail, private_redis, resubscribe, subscribe
from test_reminders import (
    Recorder,
    all_items,
    background,
    bookwire_stack,
    eventually,
    reminders_of,
    settings_env,
    wait_ready,
)

from app.job_queue import DEFAULT_QUEUE, REMINDERS_JOB_PREFIX

ENGINES = ["sqlite", "postgres"]
BOOKING_EVENTS = {"create": "booking.created", "confirm": "booking.confirmed", "cancel": "booking.cancelled"}
REDIS_BACK_LIMIT = 10.0  # SPEC: within 2 s of Redis being back; generous for a loaded 2-core machine
SETTLE_LIMIT = 10.0


# --- shared helpers ----------------------------------------------------------------------------------------


def on(server: Server, actor: Actor) -> Actor:
    """The same user, talking to another API process."""
    return Actor(actor.id, actor.role, actor.email, actor.token, server.client(actor.token))


@contextmanager
def two_apis(tmp_path: Path, engine: str, database_url: str, redis_a: str, redis_b: str,
             ) -> Iterator[tuple[Server, subprocess.Popen[bytes], Server, subprocess.Popen[bytes]]]:
    """API processes A and B on one database (A runs the migrations); each may see Redis at its own URL."""
    dir_a, dir_b = tmp_path / "a", tmp_path / "b"
    dir_a.mkdir(parents=True, exist_ok=True)
    dir_b.mkdir(parents=True, exist_ok=True)
    with running_api(dir_a, redis_a, database_url) as (url_a, process_a), \
            running_api(dir_b, redis_b, database_url, migrate=False) as (url_b, process_b):
        yield (Server(engine, url_a, database_url, dir_a), process_a,
               Server(engine, url_b, database_url, dir_b), process_b)


def logs(*servers: Server) -> str:
    return "\n".join(f"--- {s.base_url} api.log\n{log_tail(s.data_dir / 'api.log', 25)}" for s in servers)


async def until(check: Callable[[], bool], timeout: float, what: str, explain: Callable[[], str] | None = None,
                interval: float = 0.05) -> None:
    """Wait (in the event loop) until `check()` holds; fail after `timeout` s saying `what`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s" + (f"\n{explain()}" if explain else ""))
        await asyncio.sleep(interval)


def history(actor: Actor) -> list[dict[str, Any]]:
    """Everything `actor` can read from the start of the event history (long-poll from cursor 0-0)."""
    cursor, events = "0-0", list[dict[str, Any]]()
    for _ in range(500):
        answer = actor.http.get("/v1/events/poll", params={"cursor": cursor, "timeout": "0"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        if not body["events"]:
            return events
        assert not any(e["type"] == "stream.reset" for e in body["events"]), f"history from 0-0 was reset: {body}"
        events += body["events"]
        cursor = body["cursor"]
    raise AssertionError("more than 500 pages of history")


def booking_problems(label: str, arrivals: list[tuple[int, dict[str, Any]]],
                     expected: dict[tuple[str, int], str | None], bookings: set[str]) -> list[str]:
    """What is wrong with what one client received (`(connection number, envelope)` in arrival order):
    an id delivered twice on one connection, an expected booking event (booking id, version) missing or
    there more than once (under two ids: published twice), one of another type (None: any type),
    versions of a booking out of order, or booking events nobody expected for `bookings`."""
    problems = []
    per_connection = Counter((n, e["id"]) for n, e in arrivals if e["id"] is not None)
    twice = [event_id for (_, event_id), count in per_connection.items() if count > 1]
    if twice:
        problems.append(f"{label}: {len(twice)} event id(s) delivered twice on one connection: {twice[:5]}")
    merged: dict[str, dict[str, Any]] = {}
    for _, envelope in arrivals:  # the client's view once it dedups by id
        if envelope["id"] is not None:
            merged.setdefault(envelope["id"], envelope)
    ours = [e for e in merged.values() if e["type"].startswith("booking.") and e["data"]["id"] in bookings]
    ids_of: dict[tuple[str, int], list[str]] = defaultdict(list)
    for envelope in ours:
        ids_of[(envelope["data"]["id"], envelope["data"]["version"])].append(envelope["id"])
    missing = [key for key in expected if key not in ids_of]
    doubled = {key: ids for key, ids in ids_of.items() if len(ids) > 1}
    unexpected = [key for key in ids_of if key not in expected]
    wrong_type = [(key, e["type"]) for e in ours
                  if (key := (e["data"]["id"], e["data"]["version"])) in expected
                  and expected[key] not in (None, e["type"])]
    if missing:
        problems.append(f"{label}: {len(missing)} of {len(expected)} booking events LOST: {missing[:6]}")
    if doubled:
        problems.append(f"{label}: {len(doubled)} booking change(s) published more than once: "
                        f"{list(doubled.items())[:4]}")
    if unexpected:
        problems.append(f"{label}: booking events for versions no change produced: {unexpected[:6]}")
    if wrong_type:
        problems.append(f"{label}: events of the wrong type: {wrong_type[:4]}")
    versions: dict[str, list[int]] = defaultdict(list)
    for envelope in ours:
        versions[envelope["data"]["id"]].append(envelope["data"]["version"])
    disordered = {b: v for b, v in versions.items() if v != sorted(set(v))}
    if disordered:
        problems.append(f"{label}: events of a booking out of version order: {list(disordered.items())[:4]}")
    return problems


# --- readers for test 1 -------------------------------------------------------------------------------------


@dataclass
class SseFollower:
    """One user's SSE stream on one API process, read in a task; when the server ends it, reconnects with
    the last id it received (as EventSource does) and counts the connection."""

    server: Server
    actor: Actor
    label: str
    arrivals: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    arrived_at: dict[str, float] = field(default_factory=dict)
    connections: int = 0
    error: BaseException | None = None
    _stream: SSEStream | None = None
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._stream = await subscribe(self.server, self.actor.token)
        self.connections = 1
        self._task = asyncio.create_task(self._run())

    @property
    def last_id(self) -> str | None:
        return next((e["id"] for _, e in reversed(self.arrivals) if e["id"]), None)

    async def _run(self) -> None:
        try:
            while True:
                assert self._stream is not None
                event = await self._stream.next(timeout=3600)
                if event is None:  # the server ended the stream: come back with the last id
                    self._stream.close()
                    await asyncio.sleep(0.3)
                    last = self.last_id
                    assert last is not None, f"{self.label}: the stream ended before any event"
                    self._stream = await resubscribe(self.server, self.actor.token, last, time.monotonic() + 60)
                    self.connections += 1
                    continue
                if not event.data or event.event == "stream.closing":
                    continue
                envelope = event.envelope
                self.arrivals.append((self.connections, envelope))
                if envelope["id"]:
                    self.arrived_at.setdefault(envelope["id"], time.monotonic())
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.error = exc

    def has(self, event_id: str) -> bool:
        return event_id in self.arrived_at

    def booking_versions(self) -> set[tuple[str, int]]:
        return {(e["data"]["id"], e["data"]["version"]) for _, e in list(self.arrivals)
                if e["type"].startswith("booking.")}

    def arrival_of(self, key: tuple[str, int]) -> float:
        return min(self.arrived_at[e["id"]] for _, e in self.arrivals
                   if e["type"].startswith("booking.") and (e["data"]["id"], e["data"]["version"]) == key)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._stream is not None:
            self._stream.close()


@dataclass
class PollFollower(SseFollower):
    """One user's long-poll loop on one API process, following the cursor; every answer is kept, and
    (the whole loop counting as one connection) an id returned twice is a duplicate."""

    answers: list[tuple[float, int | str]] = field(default_factory=list)  # (when, status or error)

    async def start(self) -> None:
        self._client = httpx.AsyncClient(base_url=self.server.base_url, timeout=20,
                                         headers={"Authorization": f"Bearer {self.actor.token}"})
        answer = await self._client.get("/v1/events/poll")
        assert answer.status_code == 200, answer.text
        self.cursor: str = answer.json()["cursor"]
        self.connections = 1
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                answer = await self._client.get("/v1/events/poll", params={"cursor": self.cursor, "timeout": 5})
            except httpx.HTTPError as exc:
                self.answers.append((time.monotonic(), type(exc).__name__))
                await asyncio.sleep(0.2)
                continue
            self.answers.append((time.monotonic(), answer.status_code))
            if answer.status_code != 200:
                await asyncio.sleep(0.2)
                continue
            body = answer.json()
            for envelope in body["events"]:
                self.arrivals.append((1, envelope))
                if envelope["id"]:
                    self.arrived_at.setdefault(envelope["id"], time.monotonic())
            self.cursor = body["cursor"]

    async def stop(self) -> None:
        await super().stop()
        await self._client.aclose()


# --- 1. Redis down while changes are made --------------------------------------------------------------------


@dataclass
class Step:
    """One change of the plan: `who` (customer or owner) does `action` to booking `ref`."""

    who: str
    action: str
    ref: str


# 8 creates, 6 confirms, 6 cancels, interleaved; P0-P3 exist before Redis stops, N0-N7 are created after.
OUTAGE_PLAN = [Step(*s.split()) for s in (
    "customer create N0", "customer create N1", "owner confirm N0", "customer create N2", "customer cancel N0",
    "owner confirm P0", "customer create N3", "owner confirm N1", "customer create N4", "customer cancel N4",
    "owner confirm P1", "customer create N5", "customer cancel P2", "owner confirm N2", "customer create N6",
    "customer cancel N1", "owner confirm N3", "customer create N7", "customer cancel N5", "customer cancel P1",
)]


def booking_body(resource_id: str, hours: float) -> dict[str, Any]:
    return {"resource_id": resource_id, "starts_at": at(hours), "ends_at": at(hours + 1)}


def take_step(step: Step, actors: dict[str, Actor], resource_id: str, ids: dict[str, str]) -> httpx.Response:
    actor = actors[step.who]
    if step.action == "create":
        return actor.http.post("/v1/bookings", json=booking_body(resource_id, 30))
    return actor.http.post(f"/v1/bookings/{ids[step.ref]}/{step.action}", json={})


def backlog(server: Server) -> float:
    text = httpx.get(f"{server.base_url}/metrics/cluster", timeout=10).text
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("bookwire_cluster_outbox_backlog "))


@pytest.mark.parametrize("engine", ENGINES)
def test_redis_down_during_changes_loses_nothing(tmp_path: Path, engine: str) -> None:
    redis_server = RestartableRedis(tmp_path / "redis")
    redis_server.start()
    try:
        with fresh_database(engine, tmp_path) as database_url, \
                two_apis(tmp_path, engine, database_url, redis_server.url, redis_server.url) as (a, process_a, b,
                                                                                               process_b):
            customer, owner = register(a, "customer", "Carol Customer"), register(a, "provider", "Paula Provider")
            admin = sign_in_admin(b)
            asyncio.run(_redis_down(a, b, customer, owner, admin, redis_server))
            assert process_a.poll() is None and process_b.poll() is None, "an API process died\n" + logs(a, b)
    finally:
        redis_server.stop()


async def _redis_down(a: Server, b: Server, customer: Actor, owner: Actor, admin: Actor,
                      redis_server: RestartableRedis) -> None:
    actors = {"customer": customer, "owner": owner}
    resource = await asyncio.to_thread(make_resource, owner, name="Hall", capacity=20)
    poll_follower = PollFollower(b, on(b, customer), "customer's long-poll on B")
    followers: list[SseFollower] = [SseFollower(b, on(b, customer), "customer's SSE on B"),
                                    SseFollower(b, on(b, owner), "provider's SSE on B"), poll_follower]
    for follower in followers:
        await follower.start()
    ids: dict[str, str] = {}
    expected: dict[tuple[str, int], str | None] = {}
    outage_keys: set[tuple[str, int]] = set()  # the booking events of the changes made while Redis is down
    answers: list[tuple[Step, int, str]] = []
    probes: list[tuple[str, int | str, str]] = []
    try:
        for n in range(4):  # before the outage: also proves every reader is live
            created = (await asyncio.to_thread(take_step, Step("customer", "create", f"P{n}"), actors,
                                               resource["id"], ids))
            assert created.status_code == 201, created.text
            ids[f"P{n}"] = created.json()["id"]
            expected[(ids[f"P{n}"], 1)] = "booking.created"
        await until(lambda: all({(ids[f"P{n}"], 1) for n in range(4)} <= f.booking_versions() for f in followers),
                    10, "the events of the changes before the outage on every reader on B", lambda: logs(a, b))
        await asyncio.to_thread(outbox_settled, on(a, admin).http)

        await asyncio.to_thread(redis_server.stop)
        down_at = time.monotonic()
        for step in OUTAGE_PLAN:
            if step.ref not in ids and step.action != "create":
                answers.append((step, 0, f"skipped: {step.ref} was never created"))
                continue
            answer = await asyncio.to_thread(take_step, step, actors, resource["id"], ids)
            answers.append((step, answer.status_code, answer.text[:300]))
            if answer.status_code in (200, 201):
                booking = answer.json()
                ids.setdefault(step.ref, booking["id"])
                expected[(booking["id"], booking["version"])] = BOOKING_EVENTS[step.action]
                outage_keys.add((booking["id"], booking["version"]))
        waiting = await asyncio.to_thread(backlog, a)
        # Long-poll on B while Redis is down: 503 (or 200) is fine, a 500 is not.
        poller = on(b, customer).http
        cursor = poll_follower.last_id or "0-0"
        for name, params in (("no cursor", {}), ("cursor, timeout 0", {"cursor": cursor, "timeout": "0"}),
                             ("cursor, timeout 2", {"cursor": cursor, "timeout": "2"})):
            try:
                probe = await asyncio.to_thread(poller.get, "/v1/events/poll", params=params, timeout=15)
                probes.append((name, probe.status_code, probe.text[:300]))
            except httpx.HTTPError as exc:
                probes.append((name, type(exc).__name__, str(exc)))
        seen_while_down = {key for f in followers for key in f.booking_versions() if key in outage_keys}

        await asyncio.to_thread(redis_server.start)
        back_at = time.monotonic()
        down_for = back_at - down_at

        def delivered() -> bool:
            return all(outage_keys <= f.booking_versions() for f in followers) or any(f.error for f in followers)

        try:
            await until(delivered, REDIS_BACK_LIMIT, "every event of the outage on every reader once Redis is back")
        except AssertionError:
            pass  # reported below with what exactly is missing
        lateness = {f.label: max((f.arrival_of(k) - back_at for k in outage_keys if k in f.booking_versions()),
                                 default=float("nan")) for f in followers}
        # A mark after everything: whatever a reader was going to receive (duplicates too) is in by then.
        last = await asyncio.to_thread(mark, admin)
        await until(lambda: all(f.has(last) or f.error for f in followers), SETTLE_LIMIT,
                    "the mark on every reader", lambda: logs(a, b))
    finally:
        for follower in followers:
            await follower.stop()

    print(f"\n[redis down] down {down_for:.1f} s; changes: {[(s.action, s.ref, st) for s, st, _ in answers]}"
          f"\n[redis down] outbox backlog while down: {waiting:.0f}; long-poll probes on B: "
          f"{[(n, s) for n, s, _ in probes]}\n[redis down] last event after Redis came back, per reader: "
          + ", ".join(f"{label} {late:.2f}s" for label, late in lateness.items())
          + f"; connections per reader: {[f.connections for f in followers]}")
    problems = [f"{f.label} failed: {f.error!r}" for f in followers if f.error]
    refused = [(s.who, s.action, s.ref, status, text) for s, status, text in answers if status not in (200, 201)]
    if refused:
        problems.append(f"changes through A while Redis was down did not answer 2xx: {refused}")
    if seen_while_down:
        problems.append(f"events of the outage arrived while Redis was down (impossible): {sorted(seen_while_down)}")
    if waiting < len(OUTAGE_PLAN):
        problems.append(f"only {waiting:.0f} outbox rows waited while Redis was down, for {len(OUTAGE_PLAN)} changes")
    errors_500 = [(n, s, t) for n, s, t in probes if s == 500 or not isinstance(s, int)]
    if errors_500:
        problems.append(f"long-poll on B while Redis was down answered 500 (or not at all): {errors_500}")
    poll_statuses = Counter(status for _, status in poll_follower.answers)
    if poll_statuses.get(500):
        problems.append(f"the long-poll loop on B got 500s: {dict(poll_statuses)}")
    over = {label: late for label, late in lateness.items() if not late <= REDIS_BACK_LIMIT}
    if over:
        problems.append(f"not every event within {REDIS_BACK_LIMIT} s of Redis being back: {over}")
    for follower in followers:
        problems += booking_problems(follower.label, follower.arrivals, expected, set(ids.values()))
    assert not problems, "\n".join(problems) + "\n" + logs(a, b)


# --- 2. an API process killed in the middle of a burst ------------------------------------------------------


@dataclass
class Outcome:
    """One request of the burst: where it went, when it was sent, and what came back (None: no answer)."""

    who: str
    action: str
    ref: str
    process: str
    sent_at: float = 0.0
    status: int | None = None
    error: str = ""
    body: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status in (200, 201)


def outbox_rows(database_url: str) -> int:
    """How many outbox rows wait right now (read straight from the database)."""
    if database_url.startswith("sqlite:///"):
        connection = sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=30)
        try:
            return int(connection.execute("SELECT count(*) FROM outbox").fetchone()[0])
        finally:
            connection.close()

    async def count() -> int:
        conn = await asyncpg.connect(database_url, timeout=5)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM outbox"))
        finally:
            await conn.close()

    return asyncio.run(count())


@pytest.mark.parametrize("engine", ENGINES)
def test_api_killed_mid_burst_loses_nothing(tmp_path: Path, engine: str) -> None:
    with private_redis(tmp_path / "redis") as redis_server, TcpProxy(redis_server.port) as link_a, \
            fresh_database(engine, tmp_path) as database_url, \
            two_apis(tmp_path, engine, database_url, f"redis://127.0.0.1:{link_a.port}/0",
                     redis_server.url) as (a, process_a, b, process_b):
        customers = [register(b, "customer", "Carol Customer"), register(b, "customer", "Oscar Other")]
        owner = register(b, "provider", "Paula Provider")
        admin = sign_in_admin(b)
        resource = make_resource(owner, name="Arena", capacity=100)
        pending = {}
        for n in range(20):
            answer = customers[n % 2].http.post("/v1/bookings", json=booking_body(resource["id"], 40 + n / 10))
            assert answer.status_code == 201, answer.text
            pending[f"P{n}"] = answer.json()
        outbox_settled(admin.http)

        # 16 creates, 12 confirms (P0-P11), 12 cancels (P8-P19: P8-P11 race a confirm), shuffled,
        # alternately through A and B, sent 20 ms apart.
        plan = ([("customer", "create", f"N{n}") for n in range(16)]
                + [("owner", "confirm", f"P{n}") for n in range(12)]
                + [("customer", "cancel", f"P{n}") for n in range(8, 20)])
        random.Random(20240601).shuffle(plan)
        outcomes = [Outcome(who, action, ref, "AB"[i % 2]) for i, (who, action, ref) in enumerate(plan)]
        timeline = asyncio.run(_burst(a, b, process_a, link_a, customers, owner, resource["id"], pending, outcomes))
        left_behind = outbox_rows(database_url)
        assert process_b.poll() is None, "API process B died\n" + logs(b)

        outbox_settled(admin.http, timeout=SETTLE_LIMIT)
        booked = {row["id"]: row for row in all_items(admin, "/v1/bookings")}
        changed: dict[tuple[str, int], str] = {(p["id"], 1): "booking.created" for p in pending.values()}
        for outcome in outcomes:
            if outcome.ok and outcome.body is not None:
                changed[(outcome.body["id"], outcome.body["version"])] = BOOKING_EVENTS[outcome.action]
        # Every version in the database must have been published once: the answered changes with their
        # type, the changes A made but could not answer (killed) with whatever type they had.
        stored: dict[tuple[str, int], str | None] = {
            (booking_id, version): None for booking_id, row in booked.items()
            for version in range(1, row["version"] + 1)}
        unanswered_but_stored = len(set(stored) - set(changed))
        missing_answered = [key for key in changed if key not in stored]
        stored.update(changed)

        def all_changes_published() -> list[dict[str, Any]] | None:
            events = [e for e in history(admin) if e["type"].startswith("booking.")]
            keys = {(e["data"]["id"], e["data"]["version"]) for e in events}
            return events if set(changed) <= keys else None

        try:
            events = eventually(all_changes_published, 5, "an event for every change answered 2xx")
        except AssertionError:
            events = [e for e in history(admin) if e["type"].startswith("booking.")]

    after_cut = [o for o in outcomes if o.process == "A" and o.ok and o.sent_at > timeline["cut"]]
    unknown = [o for o in outcomes if o.status is None]
    print(f"\n[{engine} burst] A: {sum(o.ok for o in outcomes if o.process == 'A')} 2xx "
          f"({len(after_cut)} sent after its Redis link was cut), {len(unknown)} without an answer; "
          f"B: {sum(o.ok for o in outcomes if o.process == 'B')} 2xx; "
          f"statuses {dict(Counter(o.status for o in outcomes))}; outbox rows right after the kill: {left_behind}; "
          f"versions stored without an answer: {unanswered_but_stored}")
    problems: list[str] = []
    if not after_cut:
        problems.append("no change sent to A after its Redis link was cut answered 2xx: the test exercised nothing "
                        f"(A's answers: {[(o.action, o.status, o.error) for o in outcomes if o.process == 'A']})")
    bad = [(o.process, o.action, o.ref, o.status, (o.body or {}).get("detail", o.error))
           for o in outcomes if o.status is not None and o.status not in (200, 201, 409)]
    if bad:
        problems.append(f"answers other than 2xx/409: {bad}")
    lost_b = [(o.action, o.ref, o.error) for o in outcomes if o.process == "B" and o.status is None]
    if lost_b:
        problems.append(f"B (never killed) did not answer: {lost_b}")
    if missing_answered:
        problems.append(f"changes answered 2xx that the database does not hold: {missing_answered[:5]}")
    # The history is one connection: no id twice; every stored version of every booking once (those
    # answered 2xx with their type), in version order per booking; nothing else.
    problems += booking_problems("global history (admin, from 0-0)", [(1, e) for e in events], stored, set(booked))
    last_event = {e["data"]["id"]: e for e in events}
    ghosts = sorted(set(last_event) - set(booked))
    if ghosts:
        problems.append(f"events of bookings that do not exist (a change that did not commit): {ghosts[:5]}")
    stale = [(i, last_event[i]["data"]["status"], row["status"]) for i, row in booked.items()
             if i in last_event and last_event[i]["data"]["status"] != row["status"]]
    if stale:
        problems.append(f"bookings whose last event disagrees with the database (id, event, database): {stale[:5]}")
    assert not problems, "\n".join(problems) + "\n" + logs(a, b)


async def _burst(a: Server, b: Server, process_a: subprocess.Popen[bytes], link_a: TcpProxy,
                 customers: list[Actor], owner: Actor, resource_id: str, pending: dict[str, dict[str, Any]],
                 outcomes: list[Outcome]) -> dict[str, float]:
    """Send `outcomes` (A's and B's share), cut A's Redis link once A answered 6, SIGKILL A once it
    answered 2 more changes sent after the cut (or 5 s later); when each thing happened."""
    timeline: dict[str, float] = {"cut": float("inf"), "kill": float("inf")}
    clients: dict[tuple[str, str], httpx.AsyncClient] = {}
    for process, server in (("A", a), ("B", b)):
        for actor in [*customers, owner]:
            clients[(process, actor.id)] = httpx.AsyncClient(
                base_url=server.base_url, timeout=30, headers={"Authorization": f"Bearer {actor.token}"})

    async def send(index: int, outcome: Outcome) -> None:
        await asyncio.sleep(index * 0.02)
        if outcome.action == "create":
            actor = customers[index % 2]
            request = ("/v1/bookings", booking_body(resource_id, 40 + index / 10))
        else:
            booking = pending[outcome.ref]
            actor = owner if outcome.who == "owner" else next(c for c in customers if c.id == booking["customer_id"])
            request = (f"/v1/bookings/{booking['id']}/{outcome.action}", {})
        outcome.sent_at = time.monotonic()
        try:
            answer = await clients[(outcome.process, actor.id)].post(request[0], json=request[1])
        except httpx.HTTPError as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"
            return
        outcome.status = answer.status_code
        outcome.body = answer.json() if answer.content else None

    async def kill_a() -> None:
        from_a = [o for o in outcomes if o.process == "A"]
        await until(lambda: sum(o.status is not None for o in from_a) >= 6, 30, "A answering 6 requests")
        await asyncio.to_thread(link_a.cut)
        timeline["cut"] = time.monotonic()
        try:
            await until(lambda: sum(o.ok and o.sent_at > timeline["cut"] for o in from_a) >= 2, 5, "")
        except AssertionError:
            pass  # reported by the test: nothing sent after the cut got through
        process_a.kill()
        timeline["kill"] = time.monotonic()
        await asyncio.to_thread(process_a.wait, 10)

    try:
        await asyncio.wait_for(asyncio.gather(kill_a(), *(send(i, o) for i, o in enumerate(outcomes))), 90)
    finally:
        for client in clients.values():
            await client.aclose()
    return timeline


# --- 3. the worker killed while it fires reminders -----------------------------------------------------------


OFFSET_SECONDS = 10
WAVE = 15  # bookings per wave, each with a reminder to its owner and one to its customer
WAVE_GAP_SECONDS = 12


def sqlite_path(database_url: str) -> str:
    return database_url.removeprefix("sqlite:///")


def sent_reminders(database_url: str) -> set[str]:
    """The ids of the reminders marked `sent` (read straight from the SQLite file, for speed)."""
    connection = sqlite3.connect(f"file:{sqlite_path(database_url)}?mode=ro", uri=True, timeout=5)
    try:
        rows = connection.execute("SELECT id FROM reminders WHERE status = 'sent'").fetchall()
    finally:
        connection.close()
    return {str(row[0]).replace("-", "").lower() for row in rows}


def plain(reminder_id: str) -> str:
    return reminder_id.replace("-", "").lower()


def kill_when(process: subprocess.Popen[bytes], condition: Callable[[], bool], timeout: float, what: str) -> float:
    """SIGKILL `process` (and anything it forked) as soon as `condition()` holds; when that was."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the worker exited by itself while waiting for {what}"
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.002)
    sigkill_tree(process)
    return time.monotonic()


def test_worker_killed_while_firing_reminders(tmp_path: Path) -> None:
    offset = f"{OFFSET_SECONDS}s"
    offsets = {"REMINDER_PROVIDER_OFFSETS": offset, "REMINDER_CUSTOMER_OFFSETS": offset}
    data_dir = tmp_path / "var"
    with private_redis(tmp_path / "redis") as redis_server, \
            bookwire_stack(data_dir, redis_server.url, workers=0, schedulers=1, REMINDER_PROVIDER_OFFSETS=offset,
                           REMINDER_CUSTOMER_OFFSETS=offset) as stack, \
            ExitStack() as workers:
        env = bookwire_env(DATABASE_URL=stack.database_url, REDIS_URL=redis_server.url, DATA_DIR=str(data_dir),
                           **settings_env(**offsets))

        def start_worker(number: int) -> subprocess.Popen[bytes]:
            log = data_dir / f"worker-{number}.log"
            stack.logs.append(log)
            process = workers.enter_context(background("worker", env, log))
            wait_ready(process, log, "Listening on")
            return process

        worker = start_worker(1)
        customer = register(stack.server, "customer", "Carol Customer")
        owner = register(stack.server, "provider", "Paula Provider")
        admin = sign_in_admin(stack.server)
        room = make_resource(owner, name="Rehearsal room", capacity=2 * WAVE, requires_confirmation=False)
        due = [(datetime.now(UTC) + timedelta(seconds=14)).replace(microsecond=0)]
        due.append(due[0] + timedelta(seconds=WAVE_GAP_SECONDS))
        with Recorder(stack.base_url, customer) as to_customer, Recorder(stack.base_url, owner) as to_owner:
            waves: list[list[dict[str, Any]]] = [[], []]
            for wave, due_at in enumerate(due):
                starts_at = due_at + timedelta(seconds=OFFSET_SECONDS)
                for _ in range(WAVE):
                    answer = customer.http.post("/v1/bookings", json={
                        "resource_id": room["id"], "starts_at": starts_at.isoformat(),
                        "ends_at": (starts_at + timedelta(hours=1)).isoformat()})
                    assert answer.status_code == 201 and answer.json()["status"] == "confirmed", answer.text
                    waves[wave].append(answer.json())
            planned = [[r for booking in waves[w] for r in reminders_of(customer, booking["id"])] for w in range(2)]
            margin = (due[0] - datetime.now(UTC)).total_seconds()
            assert margin > 1, f"booking took too long: only {margin:.1f} s left before the reminders are due"
            wave1 = {plain(r["id"]) for r in planned[0]}
            wave2 = {plain(r["id"]) for r in planned[1]}
            for w in range(2):
                assert len(planned[w]) == 2 * WAVE, planned[w]
                assert all(datetime.fromisoformat(r["due_at"].replace("Z", "+00:00")) == due[w] for r in planned[w]), \
                    f"wave {w + 1}: every reminder due at {due[w]}: {planned[w]}"

            # Kill 1: as the job that fires wave 1 starts (before its claim can commit).
            redis = Redis.from_url(redis_server.url)
            try:
                started = Queue(DEFAULT_QUEUE, connection=redis).started_job_registry.key

                def firing() -> bool:
                    """The job firing reminders has started (or, should it have been too quick to see, committed)."""
                    members: Any = redis.zrange(started, 0, -1)
                    return (any(m.decode().startswith(REMINDERS_JOB_PREFIX) for m in members)
                            or bool(sent_reminders(stack.database_url) & wave1))

                kill_when(worker, firing, margin + 15, "the job firing wave 1 starting")
            finally:
                redis.close()
            first_kill = len(sent_reminders(stack.database_url) & wave1)
            worker = start_worker(2)

            # Kill 2: as soon as the claim of wave 2 is committed (the outbox rows may not be out yet).
            wait = (due[1] - datetime.now(UTC)).total_seconds() + 15
            kill_when(worker, lambda: bool(sent_reminders(stack.database_url) & wave2), wait,
                      "the claim of wave 2 committed")
            rows_left = outbox_rows(stack.database_url)
            second_kill = len(sent_reminders(stack.database_url) & wave2)
            start_worker(3)
            print(f"\n[reminders] ready {margin:.1f} s before wave 1 was due; kill 1: {first_kill} of {2 * WAVE} "
                  f"wave-1 reminders were sent; kill 2: "
                  f"{second_kill} of {2 * WAVE} wave-2 reminders were sent and {rows_left} outbox rows were waiting")

            everything = planned[0] + planned[1]
            ids = {r["id"] for r in everything}
            recorder_of = {owner.id: to_owner, customer.id: to_customer}

            def all_sent() -> bool:
                return {plain(i) for i in ids} <= sent_reminders(stack.database_url)

            # The sweep (every 10 s) fires what stayed `scheduled` 3 s past due. A wait that runs out is not
            # fatal here: what exactly is missing is reported below.
            waits: list[str] = []

            def settle(check: Callable[[], object], timeout: float, what: str) -> None:
                try:
                    eventually(check, timeout, what, interval=0.5)
                except AssertionError:
                    waits.append(f"{what}: not within {timeout} s")

            settle(all_sent, 40, "every reminder sent")
            settle(lambda: all(recorder_of[r["recipient_id"]].reminders(r["id"]) for r in everything), 10,
                 "a live reminder.due event for every reminder")

            def mailed() -> list[dict[str, Any]] | None:
                found = [d for booking in waves[0] + waves[1]
                         for d in all_items(admin, "/v1/admin/emails", booking_id=booking["id"])
                         if d["template_key"].startswith("reminder.")]
                return found if len(found) >= len(ids) and all(d["status"] == "sent" for d in found) else None

            settle(mailed, 30, "every reminder email sent")
            time.sleep(2.0)  # a second firing, event or email would show by now
            live = {r["id"]: len(recorder_of[r["recipient_id"]].reminders(r["id"])) for r in everything}

        problems = list(waits)
        final = {r["id"]: r for booking in waves[0] + waves[1] for r in reminders_of(customer, booking["id"])}
        not_sent = [(i, r["status"]) for i, r in final.items() if r["status"] != "sent"]
        if not_sent or set(final) != ids:
            problems.append(f"reminders not (only) sent: {not_sent[:5]}; {len(final)} rows for {len(ids)} planned")
        doubled_live = {i: n for i, n in live.items() if n != 1}
        if doubled_live:
            problems.append(f"live reminder.due events per reminder (want 1): {doubled_live}")
        for person in (customer, owner):
            own = [r for r in everything if r["recipient_id"] == person.id]
            events = history(person)
            due_events = Counter(e["data"]["reminder"]["id"] for e in events if e["type"] == "reminder.due")
            wrong = {r["id"]: due_events[r["id"]] for r in own if due_events[r["id"]] != 1}
            if wrong:
                problems.append(f"reminder.due in {person.role}'s history per reminder (want 1): {wrong}")
            notes = [n for n in all_items(person, "/v1/notifications") if n["type"] == "reminder.due"]
            per_reminder = Counter(n["data"]["reminder"]["id"] for n in notes)
            wrong = {r["id"]: per_reminder[r["id"]] for r in own if per_reminder[r["id"]] != 1}
            if wrong:
                problems.append(f"reminder.due notifications of the {person.role} per reminder (want 1): {wrong}")
            announced = Counter(e["data"]["id"] for e in events if e["type"] == "notification.created")
            wrong = {n["id"]: announced[n["id"]] for n in notes if announced[n["id"]] != 1}
            if wrong:
                problems.append(f"notification.created per reminder notification of the {person.role} "
                                f"(want 1): {wrong}")
        deliveries = [d for booking in waves[0] + waves[1]
                      for d in all_items(admin, "/v1/admin/emails", booking_id=booking["id"])
                      if d["template_key"].startswith("reminder.")]
        unsent = [(d["booking_id"], d["template_key"], d["status"]) for d in deliveries if d["status"] != "sent"]
        if unsent:
            problems.append(f"{len(unsent)} reminder email(s) never sent: {unsent[:4]}")
        per_booking = Counter((d["booking_id"], d["template_key"]) for d in deliveries)
        wrong_mail = {k: n for k, n in per_booking.items() if n != 1}
        if wrong_mail or len(per_booking) != len(ids):
            problems.append(f"reminder emails per booking and recipient (want 1 each, {len(ids)} in all): "
                            f"{len(per_booking)} kinds, {wrong_mail}")
        files = [message_from_bytes(p.read_bytes(), policy=policy.default) for p in sorted(stack.outbox.glob("*.eml"))]
        reminder_files = Counter(str(m["Message-ID"]) for m in files if str(m["Subject"]).startswith("Reminder"))
        if len(reminder_files) != len(ids) or any(n != 1 for n in reminder_files.values()):
            problems.append(f"{sum(reminder_files.values())} reminder .eml files ({len(reminder_files)} distinct) for "
                            f"{len(ids)} reminders")
        assert not problems, "\n".join(problems) + "\n" + stack.explain()


# --- 4. SMTP down while bookings are made --------------------------------------------------------------------


def test_smtp_down_then_up_every_email_once(tmp_path: Path) -> None:
    with private_redis(tmp_path / "redis") as redis_server:
        stack = email_workers.Stack(tmp_path / "var", redis_server.url)
        stack.data_dir.mkdir(parents=True)
        try:
            sink: Sink = stack.sink(listen=False)  # nothing listens on its port yet
            settings = stack.settings(sink, EMAIL_RETRY_INTERVALS="1s,2s,4s")
            story = email_workers.open_shop(stack, settings)
            stack.start("scheduler", settings, "scheduler.log")
            stack.start("worker", settings, "worker.log")
            bookings = [email_workers.book(story.customer, story.resource["id"], 30 + 2 * n) for n in range(10)]
            ids = [b["id"] for b in bookings]

            def all_failed_once() -> list[dict[str, Any]] | None:
                items = [d for i in ids for d in email_workers.deliveries(story.admin, i)]
                done = len(items) == 20 and all(d["attempts"] >= 1 and d["last_error"] for d in items)
                return items if done else None

            failing = email_workers.eventually(all_failed_once, 15, "a failed attempt for every email", stack)
            assert all(d["status"] == "queued" for d in failing), f"gave up before SMTP came back: {failing}"
            sink.start()
            items = email_workers.eventually(email_workers.settled(story.admin, ids, 20), 20,
                                             "every email sent once SMTP is back", stack)
            time.sleep(2.5)  # a stray retry of a sent email would arrive now
            transfers = sink.handler.snapshot()
            copies = Counter(t.message_id for t in transfers)
            assert set(copies) == {d["message_id"] for d in items}, "exactly the deliveries' messages reached SMTP"
            repeated = [(t.message_id, t.outcome) for t in transfers if copies[t.message_id] > 1]
            assert not repeated and all(t.accepted for t in transfers), f"each message accepted once: {repeated}"
            assert all(d["attempts"] >= 2 for d in items), [d["attempts"] for d in items]
        finally:
            stack.stop()
