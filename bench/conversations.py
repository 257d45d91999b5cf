"""Conversations under load: a message from one participant of a booking to the other, typing
indicators, and what presence costs when many users come and go (issue targets: message delivery
p99 <= 50 ms, <= 2 ms of API CPU per message; a provider with 5,000 customers coming online is one
publish, and a reconnect storm costs none).

    .venv/bin/python bench/conversations.py                               # SQLite, the full scale below
    .venv/bin/python bench/conversations.py --engine postgres --json bench/results/conversations-pg.json
    .venv/bin/python bench/conversations.py --conversations 20 --rate 20 --typing-rate 20 --duration 3 \\
        --storm-customers 30                                              # smoke run (about a minute)

On one engine it starts a private Redis, a scratch database, `bookwire migrate` and one `bookwire api`
process (bench/common.py), then:

setup     `--conversations` (2000) customers and `--providers` providers (default: one per
          conversation) are inserted straight into `users` with tokens minted here (registration's
          argon2 hash would take minutes); each provider creates `--resources-per-provider` (1)
          resources and each customer books one of them (`POST /v1/bookings`, distinct slots: no
          conflict possible), so every conversation is a booking between a customer and its owner.
          Then one SSE stream per user (`GET /v1/events/stream`, raw asyncio client of bench/rawhttp.py):
          with the defaults 2 streams per conversation, 4,000 in all.
messages  `POST /v1/bookings/{id}/messages` at `--rate` (200/s) for `--duration` (30 s), open loop,
          spread over all conversations, each conversation's senders alternating. For each message:
          from writing the POST to the arrival of `message.created` (`data.id` = the message's id) on
          the OTHER participant's stream, which must get it exactly once; the sender's own stream
          must get it once too (it is sent to both). API CPU per message.
typing    `POST /v1/bookings/{id}/typing` at `--typing-rate` (500/s), each (user, booking) at most once
          per `--typing-spacing` (2.5 s, so that the server's 2 s throttle lets every call publish):
          the `conversation.typing` events (no `id:` line) arriving at the other participant, latency,
          API CPU per call.
storm     one more provider sharing an active booking with each of `--storm-customers` (5000) more
          customers. Redis `INFO commandstats` (PUBLISH calls, all calls) on the private Redis while
          (a) the provider opens a stream after being offline for more than 30 s (expected: 1
          PUBLISH, reaching all N customers) and (b) all N customers' streams are dropped and opened
          again at once, a reconnect storm (expected: 0 PUBLISH, nobody was gone for 30 s).

The HTTP requests of the two timed phases come from a separate process (this script with
`--poster-mode`) holding a pool of keep-alive connections (bench/rawhttp.py), so that its CPU is
measured apart from this process, which reads the streams. Both timestamp with `time.time_ns()`.

Exit status 0 when every message was answered 201 and arrived exactly once at the other
participant (and at the sender), and the API log has no traceback; 1 otherwise; 2 when PostgreSQL
was asked for and is unreachable; 130 when interrupted. Every phase has a timeout; Redis, the API,
the poster and the scratch database are removed on exit, error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import gc
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec
import redis

THIS_FILE = str(Path(__file__).resolve())
REPO = Path(THIS_FILE).parent.parent
sys.path.insert(0, str(REPO))

from common import (  # noqa: E402
    POSTGRES_URL,
    Actor,
    ApiServer,
    api_server,
    create_resources,
    fmt,
    insert_users,
    keep_log,
    mint_tokens,
    postgres_reachable,
    server_log_problems,
    table,
)
from procs import (  # noqa: E402
    busy_cores,
    cpu_seconds,
    die_with_parent,
    interrupt_on_sigterm,
    machine_busy_seconds,
    own_cpu_seconds,
    postgres_cpu_by_pid,
    postgres_cpu_delta,
    stop_process,
    tail,
)
from rawhttp import (  # noqa: E402
    Answer,
    RequestPool,
    SseProtocol,
    http_request,
    open_stream,
    parse_block,
    raise_fd_limit,
    stream_request,
    uvloop_run,
)

from app.embedded_redis import EmbeddedRedis  # noqa: E402

# What the app does, as the benchmark relies on it (app/realtime/presence.py, app/conversations/services.py).
PRESENCE_TTL_SECONDS = 30        # offline once unseen for this long
PRESENCE_EXPIRE_SECONDS = 2      # how often each API process looks for users gone offline
PRESENCE_ONLINE_KEY = "bookwire:presence:online"
TYPING_THROTTLE_SECONDS = 2      # one `conversation.typing` per user and conversation in this time

P99_TARGET_MS = 50.0
CPU_TARGET_MS = 2.0
SLOT = timedelta(hours=1)        # bookings on one resource are an hour apart ...
BOOKING_LENGTH = timedelta(minutes=30)  # ... and last 30 minutes: none overlaps another
REQUEST_TIMEOUT = 60.0           # seconds, every HTTP request
SETTLE_QUIET = 1.5               # seconds without a PUBLISH before the setup is called settled
SETTLE_CPU = 0.10                # ... and with the API below this share of a core
BACKLOG_LINE = re.compile(rb"^bookwire_cluster_outbox_backlog (\S+)$", re.MULTILINE)

CHILDREN: list[asyncio.subprocess.Process] = []  # the poster: killed on the way out, whatever happens


def _decode(data: bytes | None) -> Any:
    """An envelope's JSON (None when unreadable)."""
    try:
        return msgspec.json.decode(data) if data is not None else None
    except msgspec.DecodeError:
        return None


def read_json(path: Path) -> Any:
    """A small JSON file (plans and records between this process and the poster: outside the timed windows)."""
    return json.loads(path.read_text())


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value))


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of already sorted values (`q` in 0..1); None for none."""
    if not values:
        return None
    rank = max(1, math.ceil(round(q * len(values), 6)))
    return values[min(rank, len(values)) - 1]


# --------------------------------------------------------------------------------------------------
# Who takes part


@dataclass(slots=True)
class User:
    """A user inserted for the run, with its access token."""

    id: str
    role: str
    token: str


@dataclass(slots=True)
class Chat:
    """A conversation: a booking and its two participants (indexes into `Population.users`)."""

    booking_id: str
    customer: int
    owner: int


@dataclass
class Population:
    """Every user of the run and the conversations between them."""

    users: list[User]
    customers: list[int]
    providers: list[int]
    storm_provider: int | None
    storm_customers: list[int]
    chats: list[Chat] = field(default_factory=list)
    storm_bookings: list[str] = field(default_factory=list)


def make_users(database_url: str, secret: str, args: argparse.Namespace) -> Population:
    """Insert every user straight into the database and mint their tokens (see `insert_users`)."""
    storm = args.storm_customers
    roles = (["customer"] * args.conversations + ["provider"] * args.providers
             + (["provider"] + ["customer"] * storm if storm else []))
    ids = insert_users(database_url, roles)
    by_role = {role: iter(mint_tokens(secret, [u for u, r in zip(ids, roles, strict=True) if r == role], role))
               for role in ("customer", "provider")}
    users = [User(uid, role, next(by_role[role])) for uid, role in zip(ids, roles, strict=True)]
    c, p = args.conversations, args.providers
    return Population(users=users, customers=list(range(c)), providers=list(range(c, c + p)),
                      storm_provider=c + p if storm else None,
                      storm_customers=list(range(c + p + 1, c + p + 1 + storm)) if storm else [])


# --------------------------------------------------------------------------------------------------
# Setup through the API: resources and bookings


@dataclass
class Setup:
    """How long the setup took, and what it made."""

    users: int = 0
    users_seconds: float = 0.0
    resources: int = 0
    resources_seconds: float = 0.0
    bookings: int = 0
    bookings_seconds: float = 0.0
    booking_failures: dict[str, int] = field(default_factory=dict)
    booking_samples: list[str] = field(default_factory=list)
    outbox_seconds: float = 0.0
    outbox_backlog_left: float | None = None
    api_fd_limit: str = ""


async def make_resources(client: httpx.AsyncClient, owners: list[User], count: int, window: int) -> list[list[str]]:
    """`count` resources (capacity 1, confirmed at once) for each owner, at most `window` owners at a time."""
    gate = asyncio.Semaphore(window)

    async def one(owner: User) -> list[str]:
        async with gate:
            actor = Actor(owner.id, owner.role, {"Authorization": f"Bearer {owner.token}"})
            return await create_resources(client, actor, count, requires_confirmation=False)

    return list(await asyncio.gather(*(one(owner) for owner in owners)))


async def book_all(pool: RequestPool, port: int, jobs: list[tuple[int, str, datetime]], users: list[User],
                   concurrency: int, setup: Setup) -> list[str | None]:
    """`POST /v1/bookings` for each (customer, resource, start), `concurrency` at a time; the new
    bookings' ids (None where it failed, counted in `setup`)."""
    ids: list[str | None] = [None] * len(jobs)
    failures: Counter[str] = Counter()
    todo = iter(range(len(jobs)))

    async def worker() -> None:
        for i in todo:
            customer, resource, start = jobs[i]
            body = json.dumps({"resource_id": resource, "starts_at": start.isoformat(),
                               "ends_at": (start + BOOKING_LENGTH).isoformat(), "notes": f"bench chat {i}"})
            answer = await pool.request(http_request("POST", "/v1/bookings", port, users[customer].token,
                                                     body.encode()), REQUEST_TIMEOUT)
            if answer.status == 201:
                ids[i] = str(msgspec.json.decode(answer.body)["id"])
                continue
            label = f"HTTP {answer.status}" if answer.status else answer.error.split(":")[0]
            failures[label] += 1
            if len(setup.booking_samples) < 3:
                setup.booking_samples.append(f"{label}: {answer.error or answer.body[:300].decode(errors='replace')}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    for label, count in failures.items():
        setup.booking_failures[label] = setup.booking_failures.get(label, 0) + count
    return ids


async def outbox_backlog(client: httpx.AsyncClient) -> float | None:
    """`bookwire_cluster_outbox_backlog` from /metrics/cluster: committed changes whose events are not out yet."""
    with contextlib.suppress(httpx.HTTPError):
        match = BACKLOG_LINE.search((await client.get("/metrics/cluster")).content)
        if match:
            return float(match.group(1))
    return None


async def set_up(server: ApiServer, population: Population, args: argparse.Namespace, setup: Setup) -> None:
    """Resources, then one booking per conversation (and per storm customer), through the API; then
    wait until the outbox has published what the bookings set in motion."""
    port = int(server.base_url.rsplit(":", 1)[1])
    users = population.users
    providers = [users[i] for i in population.providers]
    async with httpx.AsyncClient(base_url=server.base_url, timeout=REQUEST_TIMEOUT) as client:
        started = time.perf_counter()
        per_provider = await make_resources(client, providers, args.resources_per_provider, args.setup_concurrency)
        storm_resources: list[str] = []
        if population.storm_provider is not None:
            storm_owner = users[population.storm_provider]
            storm_resources = (await make_resources(client, [storm_owner], min(20, args.storm_customers), 1))[0]
        setup.resources = sum(len(r) for r in per_provider) + len(storm_resources)
        setup.resources_seconds = time.perf_counter() - started
        print(f"  {setup.resources} resources in {setup.resources_seconds:.1f} s; booking ...", flush=True)

        # Resource j of the flat list belongs to provider j % P: booking i (customer i) lands on
        # resource i % R at slot i // R, so its owner is provider i % P and no two bookings overlap.
        flat = [per_provider[j % len(providers)][j // len(providers)] for j in range(sum(map(len, per_provider)))]
        base = (datetime.now(UTC) + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
        jobs = [(c, flat[i % len(flat)], base + SLOT * (i // len(flat))) for i, c in enumerate(population.customers)]
        storm_jobs = [(c, storm_resources[i % len(storm_resources)], base + SLOT * (i // len(storm_resources)))
                      for i, c in enumerate(population.storm_customers)]
        pool = RequestPool(port, max_connections=args.setup_concurrency)
        started = time.perf_counter()
        try:
            ids = await asyncio.wait_for(book_all(pool, port, jobs + storm_jobs, users, args.setup_concurrency, setup),
                                         args.setup_timeout)
        finally:
            pool.close()
        setup.bookings_seconds = time.perf_counter() - started
        setup.bookings = sum(1 for i in ids if i is not None)
        if setup.booking_failures:
            raise RuntimeError(f"setup: {sum(setup.booking_failures.values())} bookings failed "
                               f"{dict(setup.booking_failures)}, e.g. {setup.booking_samples}")
        owner_of = {i: population.providers[i % len(providers)] for i in range(len(jobs))}
        population.chats = [Chat(str(ids[i]), c, owner_of[i]) for i, c in enumerate(population.customers)]
        population.storm_bookings = [str(b) for b in ids[len(jobs):]]

        started = time.perf_counter()  # the outbox publishes a change's events a moment after its answer
        last, last_change = await outbox_backlog(client), time.perf_counter()
        while last and time.perf_counter() - started < args.setup_timeout:
            await asyncio.sleep(0.5)
            now_backlog = await outbox_backlog(client)
            if now_backlog != last:
                last, last_change = now_backlog, time.perf_counter()
            elif time.perf_counter() - last_change > 5:
                break  # not moving: rows that wait for something else (reported)
        setup.outbox_seconds = time.perf_counter() - started
        setup.outbox_backlog_left = last


# --------------------------------------------------------------------------------------------------
# Streams: one per user, recording what each received


class Inbox:
    """Counters shared by every stream of the run."""

    def __init__(self) -> None:
        self.heartbeats = 0
        self.dropped = 0                # open streams that ended without the benchmark closing them
        self.unreadable = 0             # events whose JSON could not be read
        self.ephemeral_with_id = 0      # typing/presence frames that carried an `id:` line (must not)
        self.control: Counter[str] = Counter()   # stream.* events (e.g. stream.closing)
        self.other: Counter[str] = Counter()     # every other event type (booking.*, notification.* ...)


class ChatStream(SseProtocol):
    """One user's stream: when each `message.created` (by message id), `conversation.typing` and
    `presence.changed` arrived (`time.time_ns()` of the read it came in)."""

    __slots__ = ("inbox", "leaving", "messages", "presence", "typing", "user")

    def __init__(self, inbox: Inbox, user: int, request: bytes) -> None:
        super().__init__(request)
        self.inbox = inbox
        self.user = user
        self.leaving = False            # set before the benchmark closes it on purpose
        self.messages: dict[str, list[int]] = {}
        self.typing: list[tuple[int, str, str]] = []        # (arrival, booking_id, typist's user_id)
        self.presence: list[tuple[int, str, bool]] = []     # (arrival, user_id, online)

    def reset(self) -> None:
        """Forget what arrived so far (at the start of a phase)."""
        self.messages, self.typing, self.presence = {}, [], []

    def on_comment(self) -> None:
        self.inbox.heartbeats += 1

    def on_dropped(self) -> None:
        if not self.leaving:
            self.inbox.dropped += 1

    def close(self) -> None:
        """Drop the connection on purpose (RST, as a client that vanishes)."""
        self.leaving = True
        self.abort()

    def on_event(self, block: bytes, now: int) -> None:
        event_id, event_type, data = parse_block(block)
        if event_type == b"message.created":
            envelope = _decode(data)
            if envelope is None:
                self.inbox.unreadable += 1
                return
            self.messages.setdefault(str(envelope["data"]["id"]), []).append(now)
        elif event_type in (b"conversation.typing", b"presence.changed"):
            envelope = _decode(data)
            if envelope is None:
                self.inbox.unreadable += 1
                return
            if event_id is not None:
                self.inbox.ephemeral_with_id += 1
            event = envelope["data"]
            if event_type == b"conversation.typing":
                self.typing.append((now, str(event["booking_id"]), str(event["user_id"])))
            else:
                self.presence.append((now, str(event["user_id"]), bool(event["online"])))
        elif event_type is not None and event_type.startswith(b"stream."):
            self.inbox.control[event_type.decode()] += 1
        else:
            self.inbox.other[(event_type or b"?").decode()] += 1


@dataclass
class Connected:
    """The outcome of opening a set of streams."""

    wanted: int
    opened: int = 0
    seconds: float = 0.0
    p50: float | None = None
    p99: float | None = None
    max: float | None = None
    failures: dict[str, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Measuring: CPU from /proc, Redis commands from INFO commandstats


@dataclass
class Snapshot:
    """CPU times and Redis command counts at one moment."""

    at: float
    api: float | None
    redis: float | None
    poster: float | None
    me: float
    machine: float
    postgres: dict[int, float] | None
    calls: dict[str, int]


@dataclass
class Usage:
    """What a window cost: CPU seconds per process, and Redis commands."""

    seconds: float
    api: float | None
    redis: float | None
    poster: float | None
    client: float
    postgres: float | None
    machine: float
    publishes: int
    commands: int
    top_commands: dict[str, int]

    @property
    def other(self) -> float:
        """The machine's CPU not accounted for by the processes above (kernel, unrelated load)."""
        return self.machine - sum(x or 0.0 for x in (self.api, self.redis, self.poster, self.client, self.postgres))


def command_calls(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the Redis server started (INFO commandstats). Commands that a Lua
    script runs are counted too: the event bus PUBLISHes from its script (checked on Redis 7.0)."""
    info: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stats["calls"]) for name, stats in info.items()
            if isinstance(stats, dict) and "calls" in stats}


@dataclass
class Context:
    """Everything a phase needs."""

    args: argparse.Namespace
    server: ApiServer
    port: int
    redis_pid: int | None
    redis: redis.Redis
    population: Population
    workdir: Path
    inbox: Inbox = field(default_factory=Inbox)
    streams: dict[int, ChatStream] = field(default_factory=dict)
    poster: Poster | None = None
    idle_cpu_rate: float | None = None   # API CPU seconds per second with the conversation streams idle

    def snapshot(self) -> Snapshot:
        return Snapshot(time.perf_counter(), cpu_seconds(self.server.process.pid),
                        cpu_seconds(self.redis_pid) if self.redis_pid else None,
                        cpu_seconds(self.poster.pid) if self.poster else None, own_cpu_seconds(),
                        machine_busy_seconds(),
                        postgres_cpu_by_pid() if self.args.engine == "postgres" else None,
                        command_calls(self.redis))

    def check_alive(self) -> None:
        code = self.server.process.poll()
        if code is not None:
            raise RuntimeError(f"the API process exited during the run (code {code})")


def usage(a: Snapshot, b: Snapshot) -> Usage:
    """The cost of the window between two snapshots."""
    def delta(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else y - x

    calls = {name: n - a.calls.get(name, 0) for name, n in b.calls.items() if name != "info"}
    calls = {name: n for name, n in calls.items() if n}
    top = dict(sorted(calls.items(), key=lambda item: -item[1])[:6])
    return Usage(b.at - a.at, delta(a.api, b.api), delta(a.redis, b.redis), delta(a.poster, b.poster),
                 b.me - a.me, None if a.postgres is None or b.postgres is None
                 else postgres_cpu_delta(a.postgres, b.postgres), b.machine - a.machine,
                 calls.get("publish", 0), sum(calls.values()), top)


async def connect(ctx: Context, users: list[int]) -> Connected:
    """Open one stream per user, at most `--connect-window` being set up at a time."""
    result = Connected(len(users))
    window = asyncio.Semaphore(ctx.args.connect_window)
    times: list[float] = []
    failures: Counter[str] = Counter()

    async def one(user: int) -> None:
        async with window:
            stream = ChatStream(ctx.inbox, user, stream_request(ctx.port, ctx.population.users[user].token))
            try:
                times.append(await open_stream(stream, ctx.port, ctx.args.connect_timeout))
            except Exception as exc:
                label = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
                failures[label] += 1
                if len(result.samples) < 3:
                    result.samples.append(f"{label}: {exc}")
                return
            ctx.streams[user] = stream

    started = time.perf_counter()
    tasks = [asyncio.ensure_future(one(u)) for u in users]
    _done, pending = await asyncio.wait(tasks, timeout=ctx.args.phase_timeout)
    for task in pending:
        task.cancel()
    if pending:
        failures["phase timeout"] += len(pending)
        await asyncio.wait(pending)
    result.seconds = time.perf_counter() - started
    times.sort()
    result.opened = len(times)
    result.p50, result.p99 = pct(times, 0.50), pct(times, 0.99)
    result.max = times[-1] if times else None
    result.failures = dict(failures)
    return result


async def settle(ctx: Context, limit: float) -> float:
    """Wait until no PUBLISH happened for `SETTLE_QUIET` s and the API used less than
    `SETTLE_CPU` of a core over that time (presence announcements after connects are one database
    read each, and may run on after the PUBLISHes pause; the outbox), at most `limit` s; returns the
    seconds waited."""
    started = time.perf_counter()
    pid = ctx.server.process.pid
    samples = [(time.perf_counter(), command_calls(ctx.redis).get("publish", 0), cpu_seconds(pid) or 0.0)]
    while time.perf_counter() - started < limit:
        await asyncio.sleep(0.25)
        samples.append((time.perf_counter(), command_calls(ctx.redis).get("publish", 0), cpu_seconds(pid) or 0.0))
        window = [x for x in samples if x[0] >= samples[-1][0] - SETTLE_QUIET]
        if samples[-1][0] - samples[0][0] < SETTLE_QUIET or len(window) < 2:
            continue
        then, now = window[0], samples[-1]
        quiet = now[1] == then[1] and (now[2] - then[2]) / (now[0] - then[0]) < SETTLE_CPU
        if quiet:
            break
    return time.perf_counter() - started


# --------------------------------------------------------------------------------------------------
# The poster: a child process that sends a phase's requests on schedule (open loop)


@dataclass(slots=True)
class Planned:
    """One request of a phase: due `due` s after the start, `sender` POSTs to `path`; `receiver`
    is the other participant of conversation `chat`."""

    due: float
    path: str
    sender: int
    receiver: int
    chat: int
    body: str | None


@dataclass(slots=True)
class Record:
    """What happened to one planned request (times are `time.time_ns()`; `extra` is the message
    id of a 200/201, or the error)."""

    sent_ns: int
    done_ns: int
    due_ns: int
    status: int
    extra: str


async def execute_plan(pool: RequestPool, plan_file: Path) -> dict[str, Any]:
    """In the poster: send every request of the plan at its due time, whatever the answers do
    (open loop: a slow answer does not delay the next request), and record each outcome."""
    plan = read_json(plan_file)
    port, tokens = plan["port"], plan["tokens"]
    requests = [http_request("POST", path, port, tokens[sender], None if body is None else body.encode())
                for _due, path, sender, body in plan["requests"]]
    dues = [entry[0] for entry in plan["requests"]]
    records: list[list[Any] | None] = [None] * len(requests)

    async def one(k: int, due_ns: int) -> None:
        answer: Answer = await pool.request(requests[k], REQUEST_TIMEOUT)
        extra = answer.error
        if answer.status in (200, 201):
            try:
                extra = str(msgspec.json.decode(answer.body)["id"])
            except (msgspec.DecodeError, KeyError, TypeError):
                extra = "unreadable answer"
        elif answer.status and answer.status != 204:
            extra = answer.body[:300].decode(errors="replace")
        records[k] = [answer.sent_ns, answer.done_ns, due_ns, answer.status, extra]

    gc.collect()
    gc.disable()  # no collector pause between a due time and the write
    cpu0 = own_cpu_seconds()
    start, start_ns = time.perf_counter() + 0.05, time.time_ns() + 50_000_000
    in_flight: set[asyncio.Task[None]] = set()
    try:
        for k, due in enumerate(dues):
            delay = start + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(k, start_ns + int(due * 1e9)))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(set(in_flight))
    finally:
        gc.enable()
    return {"records": records, "cpu": own_cpu_seconds() - cpu0, "connections": pool.opened}


async def poster_main(port: int, max_connections: int) -> None:
    """The poster process: one plan per JSON line on stdin (`{"plan": file, "out": file}`), its
    records written to `out`, `{"done": true}` on stdout when finished."""
    pool = RequestPool(port, max_connections=max_connections)
    print(json.dumps({"ready": True}), flush=True)
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            break
        command = json.loads(line)
        if "plan" not in command:
            break
        result = await execute_plan(pool, Path(command["plan"]))
        write_json(Path(command["out"]), result)
        print(json.dumps({"done": True}), flush=True)
    pool.close()


class Poster:
    """The poster child process, seen from the benchmark."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def start(cls, port: int, max_connections: int, workdir: Path) -> Poster:
        with open(workdir / "poster.log", "ab") as log:  # noqa: ASYNC230 (once; the child inherits it)
            process = await asyncio.create_subprocess_exec(
                sys.executable, THIS_FILE, "--poster-mode", "--port", str(port), "--max-connections",
                str(max_connections), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                preexec_fn=die_with_parent)
        CHILDREN.append(process)
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        if not line or not json.loads(line).get("ready"):
            raise RuntimeError(f"the poster did not start:\n{tail(workdir / 'poster.log')}")
        return cls(process)

    async def run(self, plan_file: Path, out_file: Path, timeout: float) -> dict[str, Any]:
        """Have the poster carry out one plan; its records."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write((json.dumps({"plan": str(plan_file), "out": str(out_file)}) + "\n").encode())
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"the poster exited (code {self.process.returncode})")
        result: dict[str, Any] = read_json(out_file)
        return result

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(Exception):
                assert self.process.stdin is not None
                self.process.stdin.write(b"{}\n")
                await self.process.stdin.drain()
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


def message_plan(population: Population, args: argparse.Namespace) -> list[Planned]:
    """`--rate` x (`--warmup` + `--duration`) messages, evenly spaced; round r visits every
    conversation once in a shuffled order, and a conversation's sender alternates from one round to
    the next (half of each round's messages go to customers, half to owners)."""
    rng = random.Random(1)
    chats = population.chats
    order = list(range(len(chats)))
    filler = " lorem ipsum dolor sit amet" * (args.body_chars // 27 + 1)
    planned = []
    for k in range(int(args.rate * (args.warmup + args.duration))):
        rnd, j = divmod(k, len(chats))
        if j == 0:
            rng.shuffle(order)
        c = order[j]
        chat = chats[c]
        sender, receiver = (chat.customer, chat.owner) if (rnd + c) % 2 == 0 else (chat.owner, chat.customer)
        text = f"bench message {k}:{filler}"[:max(args.body_chars, 20)]
        planned.append(Planned(k / args.rate, f"/v1/bookings/{chat.booking_id}/messages", sender, receiver, c,
                               json.dumps({"body": text, "client_id": f"bench-{k}"})))
    return planned


def typing_plan(population: Population, args: argparse.Namespace) -> tuple[list[Planned], float]:
    """Typing calls at `--typing-rate` for `--warmup` + `--duration`: the (user, conversation) pairs
    are taken in turn (a shuffled cycle), so each pair calls once every pairs/rate s (a pause
    between the warm-up and the measured part only adds to that). When that would be under
    `--typing-spacing`, the rate is lowered to pairs/spacing (returned): the server publishes only the
    first call of a pair in 2 s, and this phase is about calls that publish."""
    keys = [(c, who) for c, chat in enumerate(population.chats) for who in (chat.customer, chat.owner)]
    random.Random(2).shuffle(keys)
    rate = min(args.typing_rate, len(keys) / args.typing_spacing)
    planned = []
    for k in range(int(rate * (args.warmup + args.duration))):
        c, sender = keys[k % len(keys)]
        chat = population.chats[c]
        receiver = chat.owner if sender == chat.customer else chat.customer
        planned.append(Planned(k / rate, f"/v1/bookings/{chat.booking_id}/typing", sender, receiver, c, None))
    return planned, rate


def split(planned: list[Planned], rate: float, seconds: float) -> tuple[list[Planned], list[Planned]]:
    """The first `seconds` of a plan (the warm-up) and the rest, both with due times from 0."""
    n = int(rate * seconds)
    rest = planned[n:]
    if rest:
        offset = rest[0].due
        for p in rest:
            p.due -= offset
    return planned[:n], rest


# --------------------------------------------------------------------------------------------------
# The timed phases: messages, typing


@dataclass
class Phase:
    """Figures of one timed phase."""

    name: str
    kind: str                           # "messages" or "typing"
    rate: float
    duration: float
    planned: int
    sent: int = 0
    ok: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    achieved_rate: float | None = None
    answer_p50: float | None = None
    answer_p99: float | None = None
    answer_max: float | None = None
    lag_p99: float | None = None        # ms from a request's due time to its write (pool or loop behind)
    lag_max: float | None = None
    connections: int = 0                # keep-alive connections the poster opened
    expected: int = 0                   # deliveries to the other participant
    once: int = 0
    missing: int = 0
    duplicated: int = 0
    unexpected: int = 0                 # arrivals at a stream that should not have had them
    p50: float | None = None            # ms from the request's write to the event's arrival
    p99: float | None = None
    max: float | None = None
    echo_expected: int = 0              # messages: the sender's own stream gets the message too
    echo_missing: int = 0
    echo_duplicated: int = 0
    echo_p99: float | None = None
    typing_to_typist: int = 0           # typing: events that reached the typist's own stream (must not)
    drained: bool = True
    usage: Usage | None = None
    poster_cpu: float | None = None     # the poster's own account of its CPU while sending

    def per_call_ms(self, seconds: float | None) -> float | None:
        return None if seconds is None or not self.sent else seconds * 1000 / self.sent

    def api_net(self, idle_rate: float | None) -> float | None:
        """API CPU seconds minus what the idle streams cost over the same window."""
        u = self.usage
        if u is None or u.api is None or idle_rate is None:
            return None
        return max(0.0, u.api - idle_rate * u.seconds)


def score_requests(phase: Phase, records: list[Record], ok_status: int) -> None:
    """Answers: how many got `ok_status`, round trip and lateness percentiles, the failures."""
    failures: Counter[str] = Counter()
    for r in records:
        if r.status == ok_status:
            continue
        label = f"HTTP {r.status}" if r.status else r.extra.split(":")[0]
        failures[label] += 1
        if len(phase.samples) < 3:
            phase.samples.append(f"{label}: {r.extra[:200]}")
    phase.sent = len(records)
    phase.ok = sum(1 for r in records if r.status == ok_status)
    phase.failures = dict(failures)
    answers = sorted((r.done_ns - r.sent_ns) / 1e6 for r in records)
    lags = sorted((r.sent_ns - r.due_ns) / 1e6 for r in records)
    phase.answer_p50, phase.answer_p99 = pct(answers, 0.50), pct(answers, 0.99)
    phase.answer_max = answers[-1] if answers else None
    phase.lag_p99, phase.lag_max = pct(lags, 0.99), (lags[-1] if lags else None)
    sent = sorted(r.sent_ns for r in records)
    if len(sent) > 1 and sent[-1] > sent[0]:
        phase.achieved_rate = (len(sent) - 1) / ((sent[-1] - sent[0]) / 1e9)


def score_messages(phase: Phase, planned: list[Planned], records: list[Record], ctx: Context) -> None:
    """Each 201 message must have reached the other participant's stream once, and the sender's own."""
    other: list[float] = []
    echo: list[float] = []
    expected_at: dict[int, set[str]] = defaultdict(set)
    for p, r in zip(planned, records, strict=True):
        if r.status != 201:
            continue
        message_id = r.extra
        expected_at[p.receiver].add(message_id)
        expected_at[p.sender].add(message_id)
        for who, latencies, is_echo in ((p.receiver, other, False), (p.sender, echo, True)):
            stream = ctx.streams.get(who)
            arrivals = stream.messages.get(message_id) if stream else None
            n = len(arrivals) if arrivals else 0
            if is_echo:
                phase.echo_expected += 1
                phase.echo_missing += n == 0
                phase.echo_duplicated += max(0, n - 1)
            else:
                phase.expected += 1
                phase.once += n == 1
                phase.missing += n == 0
                phase.duplicated += max(0, n - 1)
            if arrivals:
                latencies.append((arrivals[0] - r.sent_ns) / 1e6)
    phase.unexpected = sum(1 for user, stream in ctx.streams.items() for message_id in stream.messages
                           if message_id not in expected_at.get(user, ()))
    other.sort()
    echo.sort()
    phase.p50, phase.p99, phase.max = pct(other, 0.50), pct(other, 0.99), (other[-1] if other else None)
    phase.echo_p99 = pct(echo, 0.99)


def score_typing(phase: Phase, planned: list[Planned], records: list[Record], ctx: Context) -> None:
    """Each 204 typing call should have brought one `conversation.typing` (same booking and typist)
    to the other participant. An arrival belongs to the latest call of its pair written before it
    (calls of one pair are `--typing-spacing` apart, so there is no doubt which)."""
    users = ctx.population.users
    calls: dict[tuple[int, str, str], list[tuple[int, int]]] = defaultdict(list)
    for k, (p, r) in enumerate(zip(planned, records, strict=True)):
        if r.status == 204:
            chat = ctx.population.chats[p.chat]
            calls[(p.receiver, chat.booking_id, users[p.sender].id)].append((r.sent_ns, k))
    for sent in calls.values():
        sent.sort()
    matched = [0] * len(records)
    first: list[int | None] = [None] * len(records)
    for user, stream in ctx.streams.items():
        for arrival, booking_id, typist in stream.typing:
            if typist == users[user].id:
                phase.typing_to_typist += 1
                continue
            pair = calls.get((user, booking_id, typist), [])
            i = bisect.bisect_right(pair, (arrival, len(records))) - 1
            if i < 0:  # no call of this pair was written before it arrived
                phase.unexpected += 1
                continue
            k = pair[i][1]
            matched[k] += 1
            if first[k] is None:
                first[k] = arrival
    latencies = []
    for k, r in enumerate(records):
        if r.status != 204:
            continue
        phase.expected += 1
        phase.once += matched[k] == 1
        phase.missing += matched[k] == 0
        phase.duplicated += max(0, matched[k] - 1)
        arrived = first[k]
        if arrived is not None:
            latencies.append((arrived - r.sent_ns) / 1e6)
    latencies.sort()
    phase.p50, phase.p99 = pct(latencies, 0.50), pct(latencies, 0.99)
    phase.max = latencies[-1] if latencies else None


async def run_phase(ctx: Context, name: str, kind: str, planned: list[Planned], rate: float) -> Phase:
    """Hand the plan to the poster, then wait for the deliveries; CPU and Redis figures cover the
    window from the first request to the last delivery (or the end of the wait)."""
    assert ctx.poster is not None
    args = ctx.args
    phase = Phase(name, kind, rate, len(planned) / rate, len(planned))
    senders = sorted({p.sender for p in planned})
    token_index = {user: i for i, user in enumerate(senders)}
    stem = name.replace(" ", "-")
    plan_file, out_file = ctx.workdir / f"{stem}-plan.json", ctx.workdir / f"{stem}-records.json"
    write_json(plan_file, {"port": ctx.port, "tokens": [ctx.population.users[u].token for u in senders],
                           "requests": [[p.due, p.path, token_index[p.sender], p.body] for p in planned]})
    for stream in ctx.streams.values():
        stream.reset()
    gc.collect()
    gc.disable()  # no collector pause in this process while it timestamps arrivals
    try:
        before = ctx.snapshot()
        result = await ctx.poster.run(plan_file, out_file, phase.duration + args.phase_timeout)
        records = [Record(*r) for r in result["records"]]
        phase.poster_cpu, phase.connections = result["cpu"], result["connections"]
        if kind == "messages":
            wanted = [(p.receiver, r.extra) for p, r in zip(planned, records, strict=True) if r.status == 201]
            wanted += [(p.sender, r.extra) for p, r in zip(planned, records, strict=True) if r.status == 201]

            def arrived() -> int:
                return sum(1 for user, message_id in wanted
                           if user in ctx.streams and message_id in ctx.streams[user].messages)
        else:
            wanted = [(p.receiver, "") for p, r in zip(planned, records, strict=True) if r.status == 204]

            def arrived() -> int:
                return sum(len(stream.typing) for stream in ctx.streams.values())
        deadline = time.perf_counter() + args.drain_timeout
        last, last_change = arrived(), time.perf_counter()
        while last < len(wanted) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
            count = arrived()
            if count != last:
                last, last_change = count, time.perf_counter()
            elif time.perf_counter() - last_change > args.quiet:
                break
        phase.drained = last >= len(wanted)
        after = ctx.snapshot()
    finally:
        gc.enable()
    phase.usage = usage(before, after)
    if kind == "messages":
        score_requests(phase, records, 201)
        score_messages(phase, planned, records, ctx)
    else:
        score_requests(phase, records, 204)
        score_typing(phase, planned, records, ctx)
    return phase


# --------------------------------------------------------------------------------------------------
# The presence storm


@dataclass
class Step:
    """One step of the presence storm: its window's cost and what it told."""

    name: str
    usage: Usage | None = None
    note: str = ""


@dataclass
class Storm:
    """The presence storm's figures."""

    customers: int
    first_connect: Connected | None = None
    steps: list[Step] = field(default_factory=list)
    offline_after: float | None = None      # s from the provider's close to the customers hearing of it
    told: int = 0                           # customers told the provider is back
    told_p50: float | None = None           # ms from the provider's connect to the customers' event
    told_p99: float | None = None
    reconnected: Connected | None = None
    storm_seconds: float = 0.0              # from dropping the customers' streams to the last reopened
    provider_told: int = 0                  # presence.changed at the provider during the storm (expect 0)

    def step(self, name: str) -> Step | None:
        return next((s for s in self.steps if s.name == name), None)


async def wait_until(check: Any, limit: float, every: float = 0.1) -> bool:
    """Poll `check()` until it is true or `limit` s passed; whether it became true."""
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        if check():
            return True
        await asyncio.sleep(every)
    return bool(check())


async def storm_phase(ctx: Context) -> Storm:
    """(a) a provider coming back after more than 30 s offline, and (b) all their customers'
    streams dropped and reopened at once, counting Redis commands (see the module docstring)."""
    population, args = ctx.population, ctx.args
    provider = population.storm_provider
    assert provider is not None
    customers = population.storm_customers
    provider_id = population.users[provider].id
    storm = Storm(len(customers))

    def told(online: bool) -> list[int]:
        """Arrival times of `presence.changed` about the provider at the customers' streams."""
        return [t for c in customers if c in ctx.streams
                for t, who, is_online in ctx.streams[c].presence if who == provider_id and is_online == online]

    print(f"  storm: connecting {len(customers)} customers ...", flush=True)
    before = ctx.snapshot()
    storm.first_connect = await connect(ctx, customers)
    await settle(ctx, args.phase_timeout)
    storm.steps.append(Step("customers' first connect", usage(before, ctx.snapshot()),
                            f"{storm.first_connect.opened} came online; expected one PUBLISH each"))
    ctx.check_alive()

    before = ctx.snapshot()
    opened = await connect(ctx, [provider])
    await asyncio.sleep(PRESENCE_EXPIRE_SECONDS)
    await settle(ctx, 30)
    storm.steps.append(Step("provider's first connect", usage(before, ctx.snapshot()),
                            "" if opened.opened else f"could not open: {opened.samples}"))
    if provider not in ctx.streams:
        return storm

    print(f"  storm: provider offline, waiting up to {PRESENCE_TTL_SECONDS + 15} s until it is announced ...",
          flush=True)
    before = ctx.snapshot()
    closed_ns = time.time_ns()
    ctx.streams.pop(provider).close()
    gone = await wait_until(lambda: ctx.redis.zscore(PRESENCE_ONLINE_KEY, provider_id) is None,
                            PRESENCE_TTL_SECONDS + 15, every=0.25)
    await wait_until(lambda: len(told(False)) >= len(customers), 5)
    await asyncio.sleep(0.5)
    offline = sorted(told(False))
    storm.offline_after = (offline[0] - closed_ns) / 1e9 if offline else None
    storm.steps.append(Step("provider goes offline", usage(before, ctx.snapshot()),
                            f"{len(offline)}/{len(customers)} customers told"
                            + ("" if gone else "; still online in Redis after the wait")))

    before = ctx.snapshot()
    await asyncio.sleep(args.baseline_seconds)  # what the same setup costs when nothing happens
    storm.steps.append(Step("idle baseline", usage(before, ctx.snapshot()), "nobody comes or goes"))

    print("  storm: (a) the provider comes back ...", flush=True)
    for c in customers:
        if c in ctx.streams:
            ctx.streams[c].reset()
    before = ctx.snapshot()
    opened_ns = time.time_ns()
    opened = await connect(ctx, [provider])
    await wait_until(lambda: len(told(True)) >= len(customers), 10)
    await asyncio.sleep(PRESENCE_EXPIRE_SECONDS + 0.5)  # anything late (an expiry tick) is counted too
    back = sorted((t - opened_ns) / 1e6 for t in told(True))
    storm.told, storm.told_p50, storm.told_p99 = len(back), pct(back, 0.50), pct(back, 0.99)
    storm.steps.append(Step("(a) provider returns after >30 s offline", usage(before, ctx.snapshot()),
                            f"{len(back)}/{len(customers)} customers told"
                            + ("" if opened.opened else f"; could not open: {opened.samples}")))
    ctx.check_alive()

    print(f"  storm: (b) {len(customers)} customers drop and reconnect ...", flush=True)
    if provider in ctx.streams:
        ctx.streams[provider].reset()
    before = ctx.snapshot()
    started = time.perf_counter()
    for c in customers:
        stream = ctx.streams.pop(c, None)
        if stream is not None:
            stream.close()
    storm.reconnected = await connect(ctx, customers)
    storm.storm_seconds = time.perf_counter() - started
    await asyncio.sleep(PRESENCE_EXPIRE_SECONDS * 1.5 + 0.5)  # seen batches, expiry ticks
    storm.provider_told = len(ctx.streams[provider].presence) if provider in ctx.streams else 0
    storm.steps.append(Step("(b) reconnect storm", usage(before, ctx.snapshot()),
                            f"{storm.reconnected.opened}/{len(customers)} reopened within {storm.storm_seconds:.1f} s; "
                            f"provider told {storm.provider_told} times"))
    return storm


# --------------------------------------------------------------------------------------------------
# One run


@dataclass
class Results:
    """Everything measured."""

    setup: Setup = field(default_factory=Setup)
    streams: Connected | None = None
    connect_usage: Usage | None = None
    settle_seconds: float = 0.0
    idle_seconds: float = 0.0
    idle_api_cpu: float | None = None
    phases: list[Phase] = field(default_factory=list)
    typing_rate: float | None = None
    storm: Storm | None = None
    dropped: int = 0
    control: dict[str, int] = field(default_factory=dict)
    other_events: dict[str, int] = field(default_factory=dict)
    unreadable: int = 0
    ephemeral_with_id: int = 0
    error: str = ""
    log_tracebacks: int = 0
    log_errors: int = 0
    log_first: str = ""
    log_kept: str = ""


async def measure(ctx: Context, results: Results) -> None:
    """Setup through the API, the streams, then the phases, each bounded in time."""
    args, population = ctx.args, ctx.population
    await set_up(ctx.server, population, args, results.setup)
    ctx.check_alive()
    users = population.customers + population.providers
    print(f"  setup done; opening {len(users)} streams ...", flush=True)
    before = ctx.snapshot()
    results.streams = await connect(ctx, users)
    results.settle_seconds = await settle(ctx, args.phase_timeout)
    results.connect_usage = usage(before, ctx.snapshot())
    if results.streams.opened < len(users):
        raise RuntimeError(f"only {results.streams.opened}/{len(users)} streams opened: {results.streams.failures}, "
                           f"e.g. {results.streams.samples}")
    ctx.check_alive()

    gc.collect()
    gc.freeze()  # the setup's objects (thousands of streams) out of the collector's way from now on
    cpu0, started = cpu_seconds(ctx.server.process.pid), time.perf_counter()
    await asyncio.sleep(args.idle_seconds)
    cpu1 = cpu_seconds(ctx.server.process.pid)
    results.idle_seconds = time.perf_counter() - started
    if cpu0 is not None and cpu1 is not None:
        results.idle_api_cpu = cpu1 - cpu0
        ctx.idle_cpu_rate = results.idle_api_cpu / results.idle_seconds

    ctx.poster = await Poster.start(ctx.port, args.max_connections, ctx.workdir)
    try:
        typing, results.typing_rate = typing_plan(population, args)
        for kind, plan, rate in (("messages", message_plan(population, args), args.rate),
                                 ("typing", typing, results.typing_rate)):
            warm, measured = split(plan, rate, args.warmup)
            for name, part in ((f"warm-up {kind}", warm), (kind, measured)):
                if not part:
                    continue
                print(f"  {name}: {rate:g}/s for {len(part) / rate:g} s ...", flush=True)
                results.phases.append(await run_phase(ctx, name, kind, part, rate))
                ctx.check_alive()
                await asyncio.sleep(1.0)
    finally:
        await ctx.poster.stop()
    if population.storm_provider is not None:
        results.storm = await storm_phase(ctx)
        ctx.check_alive()


def api_fd_limit(pid: int) -> str:
    """The API process's soft limit of open files (from /proc/<pid>/limits)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return line.split()[3]
    return "?"


def run(args: argparse.Namespace, workdir: Path) -> Results:
    """A private Redis and one API process on a scratch database, the measurements, and the log check."""
    results = Results()
    redis_server = EmbeddedRedis(workdir / "redis", persist=False)
    try:
        redis_url = redis_server.start()
        data_dir = workdir / args.engine
        data_dir.mkdir()
        with api_server(args.engine, data_dir, redis_url, args.postgres_url, SSE_MAX_AGE="2h") as server:
            pid = server.process.pid
            results.setup.api_fd_limit = api_fd_limit(pid)
            print(f"[{args.engine}] api pid {pid} at {server.base_url} (open files limit "
                  f"{results.setup.api_fd_limit}); inserting users ...", flush=True)
            started = time.perf_counter()
            population = make_users(server.env["DATABASE_URL"], server.env["JWT_SECRET"], args)
            results.setup.users = len(population.users)
            results.setup.users_seconds = time.perf_counter() - started
            client = redis.Redis.from_url(redis_url)
            ctx = Context(args, server, int(server.base_url.rsplit(":", 1)[1]),
                          redis_server.process.pid if redis_server.process else None, client, population, workdir)
            try:
                uvloop_run(measure(ctx, results))
            except Exception as exc:  # keep what was measured; the report shows the error
                results.error = f"{type(exc).__name__}: {exc}"
            finally:
                for stream in ctx.streams.values():
                    stream.leaving = True
                client.close()
            results.dropped, results.unreadable = ctx.inbox.dropped, ctx.inbox.unreadable
            results.control, results.other_events = dict(ctx.inbox.control), dict(ctx.inbox.other)
            results.ephemeral_with_id = ctx.inbox.ephemeral_with_id
            alive = server.process.poll() is None
            stop_process(server.process)
            if not alive:
                results.error += f" the API process exited during the run (code {server.process.returncode})"
            results.log_tracebacks, results.log_errors, results.log_first = server_log_problems(server.log)
            if args.keep_logs or results.log_tracebacks or results.error:
                results.log_kept = str(keep_log(server.log, f"conversations-{args.engine}").relative_to(REPO))
    finally:
        redis_server.stop()
    return results


# --------------------------------------------------------------------------------------------------
# Report


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def passed(results: Results) -> bool:
    """Every message (warm-up included) answered 201 and arrived exactly once at both participants;
    a clean API log."""
    phases = [p for p in results.phases if p.kind == "messages"]
    return (not results.error and results.log_tracebacks == 0 and any(p.name == "messages" for p in phases)
            and all(p.planned > 0 and p.ok == p.planned and p.once == p.expected and not p.unexpected
                    and not p.echo_missing and not p.echo_duplicated for p in phases))


def report(results: Results, args: argparse.Namespace, elapsed: float, busy_before: float) -> str:
    out: list[str] = []
    s = results.setup
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    out.append(f"machine: {os.cpu_count()} cores ({platform.machine()}, Linux {platform.release()}), Python "
               f"{platform.python_version()}; busy {busy_before:.2f} cores before the start; load average now {load}")
    c, p = args.conversations, args.providers
    out.append(f"engine {args.engine}; {c} conversations between {c} customers and {p} providers "
               f"({'one provider each' if c == p else f'~{c / p:.0f} per provider, one stream each'}); "
               f"messages {args.rate:g}/s, typing {args.typing_rate:g}/s, {args.duration:g} s each; storm customers "
               f"{args.storm_customers}")
    out.append("")
    out.append("== setup ==")
    out.append(f"users: {s.users} inserted straight into the database in {s.users_seconds:.1f} s (tokens minted here)")
    rate = s.bookings / s.bookings_seconds if s.bookings_seconds else 0.0
    out.append(f"resources: {s.resources} in {s.resources_seconds:.1f} s; bookings: {s.bookings} in "
               f"{s.bookings_seconds:.1f} s ({rate:.0f}/s, {args.setup_concurrency} at a time, "
               f"{sum(s.booking_failures.values())} failed); outbox drained in {s.outbox_seconds:.1f} s"
               + (f" (backlog left: {s.outbox_backlog_left:g})" if s.outbox_backlog_left else ""))
    st = results.streams
    if st is not None:
        cu = results.connect_usage
        out.append(f"streams: {st.opened}/{st.wanted} open in {st.seconds:.1f} s (connect p50 {fmt(st.p50)} / p99 "
                   f"{fmt(st.p99)} / max {fmt(st.max)} ms); with the presence announcements that followed (settled "
                   f"after {results.settle_seconds:.1f} s): {cu.publishes if cu else 'n/a'} PUBLISH, API CPU "
                   f"{fmt(cu.api if cu else None, 2)} s")
    if results.idle_api_cpu is not None and results.idle_seconds:
        out.append(f"idle: API {100 * results.idle_api_cpu / results.idle_seconds:.1f} % of a core with the "
                   f"streams open ({results.idle_seconds:.0f} s); API open files limit {s.api_fd_limit}")
    phases = results.phases
    if phases:
        out.append("")
        out.append("== requests (sent by the poster process, open loop) ==")
        out.append(table(
            ["phase", "planned", "sent", "ok", "failed", "sent/s", "answer p50 ms", "p99", "max", "late p99 ms",
             "connections"],
            [[ph.name, str(ph.planned), str(ph.sent), str(ph.ok), str(ph.sent - ph.ok), fmt(ph.achieved_rate),
              fmt(ph.answer_p50), fmt(ph.answer_p99), fmt(ph.answer_max), fmt(ph.lag_p99), str(ph.connections)]
             for ph in phases]))
        out.append("late = from a request's due time to its write (the poster or its pool behind schedule)")
        for ph in phases:
            if ph.failures:
                out.append(f"!! {ph.name}: failures {ph.failures}")
                out.extend(f"   e.g. {sample}" for sample in ph.samples)
        out.append("")
        out.append("== delivery to the other participant (from writing the request to reading the event) ==")
        out.append(table(
            ["phase", "expected", "once", "missing", "dup", "unexpected", "p50 ms", "p99 ms", "max ms", "drained"],
            [[ph.name, str(ph.expected), str(ph.once), str(ph.missing), str(ph.duplicated), str(ph.unexpected),
              fmt(ph.p50), fmt(ph.p99), fmt(ph.max), "yes" if ph.drained else "NO"] for ph in phases]))
        for messages in (ph for ph in phases if ph.kind == "messages"):
            out.append(f"{messages.name} at the sender's own stream: {messages.echo_expected} expected, "
                       f"{messages.echo_missing} missing, {messages.echo_duplicated} duplicated, p99 "
                       f"{fmt(messages.echo_p99)} ms")
        typing = next((ph for ph in phases if ph.name == "typing"), None)
        if typing is not None:
            capped = "" if results.typing_rate == args.typing_rate else (
                f" (rate lowered from {args.typing_rate:g}/s: {2 * c} (user, conversation) pairs, each at most once "
                f"per {args.typing_spacing:g} s)")
            out.append(f"typing: {typing.ok} calls answered 204 at {fmt(results.typing_rate)}/s{capped}; "
                       f"{typing.once + typing.duplicated} events matched a call, {typing.typing_to_typist} reached "
                       f"the typist's own stream (must be 0)")
        out.append("")
        out.append("== CPU and Redis during each phase (from the first request to the last delivery) ==")
        rows = []
        for ph in phases:
            u = ph.usage
            if u is None:
                continue
            rows.append([ph.name, fmt(u.seconds), fmt(u.api, 2), fmt(ph.per_call_ms(u.api), 2),
                         fmt(ph.per_call_ms(ph.api_net(ctx_idle_rate(results))), 2), fmt(u.redis, 2),
                         fmt(u.poster, 2), fmt(ph.per_call_ms(ph.poster_cpu), 3), fmt(u.client, 2),
                         fmt(u.postgres, 2), fmt(u.other, 2), str(u.publishes),
                         fmt(u.commands / ph.sent if ph.sent else None, 1)])
        out.append(table(["phase", "window s", "API s", "API ms/call", "net ms/call", "Redis s", "poster s",
                          "poster ms/call", "SSE client s", "PG s", "other s", "PUBLISH", "Redis cmds/call"], rows))
        out.append("net = API CPU minus the idle rate of the open streams over the same window; poster = the "
                   "process sending the requests (ms/call from its own account); SSE client = this process; other "
                   "= the rest of the machine (should be near 0)")
        for ph in phases:
            if ph.usage is not None:
                out.append(f"{ph.name}: Redis commands {ph.usage.top_commands}")
    storm = results.storm
    if storm is not None:
        out.append("")
        out.append(f"== presence storm: one provider sharing an active booking with each of {storm.customers} "
                   f"customers (Redis INFO commandstats) ==")
        out.append(table(["step", "window s", "PUBLISH", "Redis cmds", "API CPU s", "note"],
                         [[step.name, fmt(step.usage.seconds if step.usage else None),
                           str(step.usage.publishes) if step.usage else "n/a",
                           str(step.usage.commands) if step.usage else "n/a",
                           fmt(step.usage.api if step.usage else None, 2), step.note] for step in storm.steps]))
        if storm.offline_after is not None:
            out.append(f"the provider was announced offline {storm.offline_after:.1f} s after its stream closed")
        out.append(f"(a) customers told the provider is back: {storm.told}/{storm.customers}, p50 "
                   f"{fmt(storm.told_p50)} / p99 {fmt(storm.told_p99)} ms after its connect began")
        if storm.reconnected is not None:
            out.append(f"(b) {storm.reconnected.opened}/{storm.customers} streams reopened "
                       f"(connect p99 {fmt(storm.reconnected.p99)} ms), all within {storm.storm_seconds:.1f} s of "
                       f"the drop; the provider got {storm.provider_told} presence.changed (expected 0)")
    out.append("")
    out.append("== against the targets ==")
    measured = next((ph for ph in phases if ph.name == "messages"), None)
    if measured is not None and measured.usage is not None:
        per_message = measured.per_call_ms(measured.usage.api)
        net = measured.per_call_ms(measured.api_net(ctx_idle_rate(results)))
        out.append(f"message delivery p99 <= {P99_TARGET_MS:g} ms: {fmt(measured.p99)} ms "
                   f"{verdict(measured.p99 is not None and measured.p99 <= P99_TARGET_MS)}")
        out.append(f"API CPU per message <= {CPU_TARGET_MS:g} ms: {fmt(per_message, 2)} ms (net of idle "
                   f"{fmt(net, 2)}) {verdict(per_message is not None and per_message <= CPU_TARGET_MS)}")
    if storm is not None:
        a, b = storm.step("(a) provider returns after >30 s offline"), storm.step("(b) reconnect storm")
        if a is not None and a.usage is not None:
            out.append(f"provider returning: 1 PUBLISH: {a.usage.publishes} {verdict(a.usage.publishes == 1)}")
        if b is not None and b.usage is not None:
            out.append(f"reconnect storm: 0 PUBLISH: {b.usage.publishes} {verdict(b.usage.publishes == 0)}")
    out.append("")
    out.append(f"streams dropped by the server: {results.dropped}; control events {results.control}; ephemeral "
               f"frames with an id line: {results.ephemeral_with_id}; unreadable events: {results.unreadable}")
    out.append(f"other events received: {results.other_events}")
    out.append(f"API log: {results.log_tracebacks} tracebacks, {results.log_errors} ERROR/WARNING lines"
               + (f"; kept in {results.log_kept}" if results.log_kept else ""))
    if results.log_first:
        out.append(results.log_first)
    if results.error:
        out.append(f"!! stopped early: {results.error}")
    out.append("")
    out.append(f"total time {elapsed:.0f} s; "
               + ("every message arrived exactly once" if passed(results) else "SOME CHECKS FAILED, see above"))
    return "\n".join(out)


def summary(results: Results) -> dict[str, Any]:
    """The headline figures, for the JSON file."""
    out: dict[str, Any] = {"ok": passed(results)}
    for ph in results.phases:
        if ph.name in ("messages", "typing") and ph.usage is not None:
            out[ph.name] = {"p50_ms": ph.p50, "p99_ms": ph.p99, "missing": ph.missing, "duplicated": ph.duplicated,
                            "api_cpu_ms_per_call": ph.per_call_ms(ph.usage.api),
                            "api_cpu_net_ms_per_call": ph.per_call_ms(ph.api_net(ctx_idle_rate(results))),
                            "poster_cpu_ms_per_call": ph.per_call_ms(ph.poster_cpu),
                            "redis_publishes": ph.usage.publishes}
    if results.storm is not None:
        out["storm_publishes"] = {step.name: step.usage.publishes for step in results.storm.steps if step.usage}
        out["storm_offline_after_s"] = results.storm.offline_after
    return out


def ctx_idle_rate(results: Results) -> float | None:
    """API CPU seconds per second with the conversation streams open and idle."""
    if results.idle_api_cpu is None or not results.idle_seconds:
        return None
    return results.idle_api_cpu / results.idle_seconds


# --------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--postgres-url", default=POSTGRES_URL,
                        help="PostgreSQL server to create the scratch database on (env BENCH_POSTGRES_URL)")
    parser.add_argument("--conversations", type=int, default=2000, help="bookings, each its own customer (2000)")
    parser.add_argument("--providers", type=int, default=None,
                        help="providers owning them (default: one per conversation; fewer: each provider's one "
                             "stream carries several conversations)")
    parser.add_argument("--resources-per-provider", type=int, default=1, help="(1)")
    parser.add_argument("--rate", type=float, default=200.0, help="messages per second (200)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of each timed phase (30)")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of unmeasured load at the same rate before each timed phase (2; 0: none)")
    parser.add_argument("--body-chars", type=int, default=80, help="length of a message body (80)")
    parser.add_argument("--typing-rate", type=float, default=500.0, help="typing calls per second (500)")
    parser.add_argument("--typing-spacing", type=float, default=2.5,
                        help="seconds between two calls of one user in one conversation, at least (2.5)")
    parser.add_argument("--storm-customers", type=int, default=5000,
                        help="customers of the storm's provider (5000; 0 skips the storm)")
    parser.add_argument("--baseline-seconds", type=float, default=3.0,
                        help="the storm's idle baseline window (3)")
    parser.add_argument("--idle-seconds", type=float, default=10.0,
                        help="API CPU with the streams open and nothing happening, before the phases (10: "
                             "presence rewrites every online user every 10 s, so the window holds one such refresh)")
    parser.add_argument("--setup-concurrency", type=int, default=16, help="setup requests in flight (16)")
    parser.add_argument("--max-connections", type=int, default=64,
                        help="keep-alive connections the poster may open (64)")
    parser.add_argument("--connect-window", type=int, default=64, help="streams being set up at once (64)")
    parser.add_argument("--connect-timeout", type=float, default=30.0, help="per stream, seconds (30)")
    parser.add_argument("--setup-timeout", type=float, default=900.0, help="seconds for all bookings (900)")
    parser.add_argument("--phase-timeout", type=float, default=300.0,
                        help="seconds added to a phase's duration before it is abandoned (300)")
    parser.add_argument("--drain-timeout", type=float, default=30.0,
                        help="seconds to wait for deliveries after the last answer (30)")
    parser.add_argument("--quiet", type=float, default=3.0,
                        help="stop waiting for deliveries after this many seconds without one (3)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--keep-logs", action="store_true", help="copy the API log to bench/results/")
    parser.add_argument("--poster-mode", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.poster_mode:
        return args
    args.providers = args.providers or args.conversations
    for name in ("conversations", "providers", "resources_per_provider", "setup_concurrency", "max_connections",
                 "connect_window"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.providers > args.conversations:
        parser.error("--providers must not exceed --conversations")
    for name in ("rate", "duration", "typing_rate", "typing_spacing"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    if args.typing_spacing < TYPING_THROTTLE_SECONDS:
        parser.error(f"--typing-spacing under {TYPING_THROTTLE_SECONDS} s: the server would throttle calls")
    if args.storm_customers < 0:
        parser.error("--storm-customers must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fd_limit = raise_fd_limit()  # before any child starts: the API inherits it
    if args.poster_mode:
        uvloop_run(poster_main(args.port, args.max_connections))
        return 0
    interrupt_on_sigterm()
    # This process and the API each hold one socket per stream (the API also the poster's connections).
    sockets = args.conversations + args.providers + args.storm_customers + 1 + args.max_connections
    if sockets + 512 > fd_limit:
        print(f"open files limit {fd_limit} is too low for ~{sockets} sockets per process", file=sys.stderr)
        return 2
    if args.engine == "postgres" and not postgres_reachable(args.postgres_url):
        print(f"PostgreSQL is not reachable at {args.postgres_url}", file=sys.stderr)
        return 2
    busy = busy_cores(1.0)
    print(f"bench/conversations.py: {args.engine}, {args.conversations} conversations, {os.cpu_count()} cores, "
          f"open files limit {fd_limit}; before starting, the machine was busy {busy:.2f} cores", flush=True)
    if busy > 0.2:
        print("!! other processes are using the CPU: the figures will be worse and noisier", flush=True)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bookwire-conversations-"))
    try:
        results = run(args, workdir)
    finally:
        for child in CHILDREN:  # normally stopped already; after Ctrl-C perhaps not
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
        shutil.rmtree(workdir, ignore_errors=True)
    text = report(results, args, time.monotonic() - started, busy)
    print("\n" + text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) if isinstance(v, Path) else v
                                                  for k, v in vars(args).items()},
                                         "cores": os.cpu_count(), "summary": summary(results),
                                         "results": asdict(results)},
                                        indent=2, default=str))
    return 0 if passed(results) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the finally blocks have stopped and removed everything
        print("\ninterrupted; the API, Redis, the poster and the scratch database were stopped/removed",
              file=sys.stderr)
        sys.exit(130)
