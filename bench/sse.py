"""Server-Sent Events fan-out: Bookwire's `GET /v1/events/stream` against the usual Python SSE server.

    .venv/bin/python bench/sse.py [--sizes 1000,5000,10000] [--only bookwire|baseline|both] [--quick]
    .venv/bin/python bench/sse.py --sizes 10000 --only bookwire --profile --gc-stats   # where the time goes
    .venv/bin/python bench/sse.py --app-dir /tmp/bw-<commit>   # measure a `git archive` of one commit

For each server and each N it starts, from scratch, a private redis-server (EmbeddedRedis, no
persistence) and ONE server process (one uvicorn worker) on a free loopback port:

- `bookwire`: `bookwire migrate` on a fresh SQLite file, N customers inserted straight into the
  `users` table (registration hashes with argon2, far too slow for 10,000 users), then
  `bookwire api`. Tokens are minted here with PyJWT (HS256, the server's random `JWT_SECRET`,
  sub/role/iat/exp/iss/aud). Events go through Bookwire's own publishing path, `EventBus.publish`
  (the Lua script: Redis Streams + PUBLISH), from a separate publisher process, so the API process
  only fans out.
- `baseline`: `bench/sse_baseline.py`, FastAPI + sse-starlette + redis.asyncio with one shared
  pub/sub subscription fanning out to per-connection asyncio.Queues. Its publisher PUBLISHes the
  same payload on its channel.

The client is this process: raw asyncio protocols on uvloop (no HTTP library), one HTTP/1.1
`GET /v1/events/stream` with `Authorization: Bearer` per user, each stream its own user, opened
with at most `--connect-window` connections being set up at a time. Connect time = from starting
the TCP connect to receiving the `retry:` line. Every event carries its publish time
(`{"t": time.time_ns(), "seq": k}`), so latency = receive time - publish time, on the same clock.
Each stream counts the envelope ids it received: lost = expected ids it never got, duplicated =
ids it got more than once, unexpected = ids that were not meant for it.

Per server and N, in this order: RSS before connecting; connect N streams; RSS with N idle streams
(-> memory per stream); server CPU over `--idle-seconds` (20) with nothing published;
(b) targeted: 200 events/s for 10 s, each to `user:<random user>`; the step search of the targeted
rate (200, 500, 1000, 2000, 4000 /s, 5 s each, stop at the first step whose p99 >= 100 ms, or that
loses events, or whose rate the publisher could not reach); (a) broadcast: 20 `bench.tick` events
at 5/s on `broadcast`; then 200 targeted events/s for 20 s right after the broadcast (a broadcast
writes to every stream at once, which lines up the streams' heartbeat timers: this probe shows it).
Server CPU per delivered event = utime+stime of the server process during the scenario (from the
publisher's start until the last event arrived) / events delivered; "net" subtracts the idle CPU
rate measured before. Every phase has a timeout; all children (servers, Redis, publishers, py-spy)
are stopped at the end, on any error, Ctrl-C or SIGTERM, and get PR_SET_PDEATHSIG so that they die
with this process even after kill -9.

Diagnostics (separate runs; see bench/README.md): `--profile` samples the server with py-spy
during an extra broadcast and an extra idle period; `--gc-stats` times the server's garbage
collections; `--tracemalloc` attributes the memory of the idle streams to source lines;
`--gc-freeze` shows what `gc.freeze()` after connecting would change. None of them changes the
server's code: the last three start it under a small wrapper (`DIAG_WRAPPER`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import itertools
import json
import os
import platform
import random
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

THIS_FILE = str(Path(__file__).resolve())
REPO = Path(THIS_FILE).parent.parent
sys.path.insert(0, str(REPO))

from common import insert_users, mint_tokens, table  # noqa: E402
from procs import (  # noqa: E402
    CLK_TCK,
    interrupt_on_sigterm,
    machine_busy_seconds,
    own_cpu_seconds,
    stat_fields,
    stop_process,
    tail,
)
from rawhttp import (  # noqa: E402
    SseProtocol,
    open_stream,
    parse_block,
    raise_fd_limit,
    stream_request,
    uvloop_run,
)

from app.embedded_redis import EmbeddedRedis, free_port  # noqa: E402

SERVER_START_TIMEOUT = 60.0
MIGRATE_TIMEOUT = 180.0
BASELINE_CHANNEL = "bench:baseline:live"   # must match bench/sse_baseline.py
EVENT_TYPE = "bench.tick"
P99_TARGET_MS = 100.0
PUBLISH_IN_FLIGHT = 64            # publishes awaiting Redis at once in the publisher
T_FIELD = re.compile(rb'"t":(\d+)')

# --------------------------------------------------------------------------------------------------
# Processes, CPU and memory


def _child_setup() -> None:
    """In a child before exec: die with the benchmark (PR_SET_PDEATHSIG), and enough descriptors."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    with contextlib.suppress(Exception):
        raise_fd_limit()


def cpu_times(pid: int | None) -> tuple[float, float] | None:
    """(utime, stime) of one process and all its threads, in seconds, or None."""
    if not pid:
        return None
    fields = stat_fields(pid)
    return None if fields is None else (int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK)


def cpu_seconds(pid: int | None) -> float | None:
    times = cpu_times(pid)
    return None if times is None else times[0] + times[1]


def rss_kib(pid: int | None, key: str = "VmRSS") -> int | None:
    if not pid:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def log_problems(path: Path) -> tuple[int, int, str]:
    """Tracebacks and ERROR/WARNING lines in a server log, and the first traceback."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return 0, 0, ""
    tracebacks = sum(1 for line in lines if line.startswith("Traceback"))
    errors = sum(1 for line in lines if line.startswith(("ERROR", "WARNING")) or " ERROR " in line
                 or " WARNING " in line)
    first = ""
    if tracebacks:
        start = next(i for i, line in enumerate(lines) if line.startswith("Traceback"))
        first = "\n".join(lines[max(0, start - 2):start + 30])
    return tracebacks, errors, first


def wait_for_health(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{tail(log)}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310 (loopback only)
                if answer.status == 200:
                    return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {SERVER_START_TIMEOUT} s:\n{tail(log)}")


# --------------------------------------------------------------------------------------------------
# The servers under test

# With --gc-stats, --gc-freeze or --tracemalloc the server runs under this wrapper (no change to its
# code): it times every garbage collection (gc.callbacks) and, on SIGUSR1, writes what it knows as
# JSON: collections and their time per generation, the number of gc-tracked objects, and with
# BENCH_TRACEMALLOC=1 the Python allocations by source line. On SIGUSR2 it runs `gc.collect();
# gc.freeze()` (the what-if of --gc-freeze). Diagnostic runs only: tracemalloc slows every
# allocation, so the other figures of such a run are not comparable.
DIAG_WRAPPER = r'''
import gc, json, os, runpy, signal, sys, time, tracemalloc
if os.environ.get("BENCH_TRACEMALLOC") == "1":
    tracemalloc.start(1)
gc_time = [0.0, 0.0, 0.0]
gc_runs = [0, 0, 0]
started = [0.0]
def on_gc(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
    else:
        gc_time[info["generation"]] += time.perf_counter() - started[0]
        gc_runs[info["generation"]] += 1
gc.callbacks.append(on_gc)
dumps = [0]
def dump(signum, frame):
    dumps[0] += 1
    out = {"gc_time": gc_time, "gc_runs": gc_runs, "gc_objects": len(gc.get_objects()),
           "gc_threshold": gc.get_threshold()}
    if tracemalloc.is_tracing():
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        out["lines"] = [[st.traceback[0].filename, st.traceback[0].lineno, st.size, st.count]
                        for st in snap.statistics("lineno")]
    path = os.environ["BENCH_DIAG_OUT"] + "." + str(dumps[0])
    with open(path + ".tmp", "w") as f:
        json.dump(out, f)
    os.rename(path + ".tmp", path)
signal.signal(signal.SIGUSR1, dump)
def freeze(signum, frame):
    gc.collect()
    gc.freeze()
signal.signal(signal.SIGUSR2, freeze)
if sys.argv[1] == "bookwire":
    sys.argv = ["app.cli", "api"]
    runpy.run_module("app.cli", run_name="__main__", alter_sys=True)
else:
    sys.argv = [sys.argv[1]]
    runpy.run_path(sys.argv[0], run_name="__main__")
'''


@dataclass
class Target:
    kind: str                       # "bookwire" or "baseline"
    workdir: Path
    redis: EmbeddedRedis
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    user_ids: list[str]
    tokens: list[str]
    app_dir: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def redis_pid(self) -> int | None:
        return self.redis.process.pid if self.redis.process else None

    def stop(self) -> None:
        stop_process(self.process)
        self.redis.stop()


def server_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "JWT_", "ADMIN_"))}
    env.update(overrides)
    return env


def spawn(argv: list[str], env: dict[str, str], log: Path, cwd: Path = REPO) -> subprocess.Popen[bytes]:
    """A child process (`python -m app.cli` picks the `app` package of `cwd`, before the editable install)."""
    with open(log, "ab") as out:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=_child_setup)


def describe_code(app_dir: Path) -> str:
    """Which Bookwire code a run measures: the commit of `app_dir`, and whether app/ differs from it."""
    try:
        commit = subprocess.run(["git", "-C", str(app_dir), "log", "-1", "--format=%h %cI"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(app_dir), "status", "--porcelain", "--", "app", "workers",
                                "piccolo_conf.py"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        marker = app_dir / ".bench-commit"
        label = marker.read_text().strip() if marker.exists() else "not a git work tree"
        return f"{app_dir} ({label})"
    changed = [line[3:] for line in dirty.splitlines()]
    return f"{app_dir} at commit {commit}" + (f", with uncommitted changes in {', '.join(changed)}" if changed
                                               else ", app/ clean")


def diag_env(workdir: Path, diag: str) -> dict[str, str]:
    return {"BENCH_DIAG_OUT": str(workdir / "diag"), "BENCH_TRACEMALLOC": "1" if diag == "tracemalloc" else "0"}


def start_target(kind: str, users: int, workdir: Path, app_dir: Path, diag: str | None = None) -> Target:
    """A private Redis and one server process with `users` users (+1 for the warm-up stream)."""
    workdir.mkdir(parents=True)
    log = workdir / "server.log"
    redis = EmbeddedRedis(workdir / "redis", persist=False)
    process = None
    try:
        redis_url = redis.start()
        port = free_port()
        secret = secrets.token_urlsafe(48)
        if kind == "bookwire":
            db_path = workdir / "bookwire.sqlite3"
            env = server_env(DATABASE_URL=f"sqlite:///{db_path}", REDIS_URL=redis_url, DATA_DIR=str(workdir),
                             PORT=str(port), HOST="127.0.0.1", JWT_SECRET=secret)
            migrate = spawn([sys.executable, "-m", "app.cli", "migrate"], env, log, app_dir)
            try:
                code = migrate.wait(timeout=MIGRATE_TIMEOUT)
            finally:
                stop_process(migrate)
            if code != 0:
                raise RuntimeError(f"bookwire migrate exited with {code}:\n{tail(log)}")
            user_ids = insert_users(f"sqlite:///{db_path}", ["customer"] * (users + 1))
            if diag:
                env.update(diag_env(workdir, diag))
                process = spawn([sys.executable, "-c", DIAG_WRAPPER, "bookwire"], env, log, app_dir)
            else:
                process = spawn([sys.executable, "-m", "app.cli", "api"], env, log, app_dir)
            health = f"http://127.0.0.1:{port}/health"
        else:
            env = server_env(REDIS_URL=redis_url, PORT=str(port), HOST="127.0.0.1", JWT_SECRET=secret)
            user_ids = [str(uuid.uuid4()) for _ in range(users + 1)]
            baseline = str(REPO / "bench" / "sse_baseline.py")
            if diag:
                env.update(diag_env(workdir, diag))
                process = spawn([sys.executable, "-c", DIAG_WRAPPER, baseline], env, log)
            else:
                process = spawn([sys.executable, baseline], env, log)
            health = f"http://127.0.0.1:{port}/health"
        wait_for_health(health, process, log)
        return Target(kind, workdir, redis, process, port, log, user_ids, mint_tokens(secret, user_ids), app_dir)
    except BaseException:
        stop_process(process)
        redis.stop()
        raise


# --------------------------------------------------------------------------------------------------
# The client: one asyncio protocol per stream


class Stream(SseProtocol):
    """One SSE connection of a run (the HTTP and SSE framing is `rawhttp.SseProtocol`): counts, per
    envelope id, the `bench.tick` events it received, and their latency."""

    __slots__ = ("fleet", "index", "seen")

    def __init__(self, fleet: Fleet, index: int, request: bytes) -> None:
        super().__init__(request)
        self.fleet = fleet
        self.index = index
        self.seen: dict[bytes, int] = {}

    def on_comment(self) -> None:
        self.fleet.heartbeats += 1

    def on_dropped(self) -> None:
        if not self.fleet.closing:
            self.fleet.dropped += 1

    def on_event(self, block: bytes, now: int) -> None:
        fleet = self.fleet
        event_id, event_type, data = parse_block(block)
        if event_type is not None and event_type.startswith(b"stream."):
            fleet.control[event_type.decode()] += 1
            return
        match = T_FIELD.search(data) if data is not None else None
        if event_id is None or match is None:
            fleet.unreadable += 1
            return
        seen = self.seen
        seen[event_id] = seen.get(event_id, 0) + 1
        fleet.latencies.append(now - int(match.group(1)))
        fleet.received += 1


class Fleet:
    """All streams of one run, and what they received since the last `reset`."""

    def __init__(self, port: int, tokens: list[str]) -> None:
        self.port = port
        self.requests = [stream_request(port, token) for token in tokens]
        self.streams: list[Stream | None] = [None] * len(tokens)
        self.closing = False
        self.dropped = 0
        self.heartbeats = 0
        self.unreadable = 0
        self.control: Counter[str] = Counter()
        self.latencies: list[int] = []
        self.received = 0

    def reset(self) -> None:
        self.latencies = []
        self.received = 0
        for stream in self.streams:
            if stream is not None and stream.seen:
                stream.seen = {}

    async def open(self, index: int, timeout: float) -> float:
        """Open stream `index`; milliseconds until its `retry:` line arrived."""
        stream = Stream(self, index, self.requests[index])
        took = await open_stream(stream, self.port, timeout)
        self.streams[index] = stream
        return took

    def close(self) -> None:
        self.closing = True
        for stream in self.streams:
            if stream is not None:
                stream.abort()

    @property
    def open_streams(self) -> list[Stream]:
        return [s for s in self.streams if s is not None and s.state == 1]


# --------------------------------------------------------------------------------------------------
# The publisher: a child process (`--publisher-mode`) driven by JSON lines on stdin


class PublisherChild:
    """The publisher process: runs one paced plan per JSON line on stdin, answers one JSON line each."""

    def __init__(self, kind: str, redis_url: str, users: list[str]) -> None:
        from redis.asyncio import Redis

        self.users = users
        self.redis = Redis.from_url(redis_url, max_connections=PUBLISH_IN_FLIGHT + 8)
        self.bus = None
        if kind == "bookwire":
            from app.realtime.bus import EventBus

            self.bus = EventBus(self.redis, retention_seconds=7 * 86400)
        self.command_no = 0

    async def publish(self, k: int, target: int, records: list[Any], errors: Counter[str]) -> None:
        """Event number `k` to `broadcast` (target -1) or to user number `target`."""
        channels = ["broadcast"] if target < 0 else [f"user:{self.users[target]}"]
        t = time.time_ns()
        data = {"t": t, "seq": k}
        try:
            if self.bus is not None:  # Bookwire's own path: the Lua script (Streams + PUBLISH)
                event_id, _ = await self.bus.publish(EVENT_TYPE, channels, data)
            else:
                event_id = f"{self.command_no}-{k}"
                occurred = datetime.now(UTC).isoformat().replace("+00:00", "Z")
                await self.redis.publish(BASELINE_CHANNEL, json.dumps(
                    {"id": event_id, "type": EVENT_TYPE, "channels": channels, "occurred_at": occurred,
                     "data": data}, separators=(",", ":")))
            records[k] = (event_id, target, t)
        except Exception as exc:
            errors[type(exc).__name__] += 1

    async def run(self, command: dict[str, Any]) -> dict[str, Any]:
        self.command_no += 1
        rate, count = float(command["rate"]), int(command["count"])
        rng = random.Random(command.get("seed", self.command_no))
        users = int(command["users"])
        targets = [-1] * count if command["mode"] == "broadcast" else [rng.randrange(users) for _ in range(count)]
        records: list[Any] = [None] * count
        errors: Counter[str] = Counter()
        cpu0 = own_cpu_seconds()
        in_flight: set[asyncio.Task[None]] = set()
        start = time.perf_counter() + 0.02
        k = 0
        while k < count:  # paced: event k is due at start + k / rate, at most PUBLISH_IN_FLIGHT in flight
            now = time.perf_counter()
            due = min(count, int((now - start) * rate) + 1) if now >= start else 0
            if due <= k:
                await asyncio.sleep(max(0.0, start + k / rate - now))
                continue
            while k < due and len(in_flight) < PUBLISH_IN_FLIGHT:
                task = asyncio.create_task(self.publish(k, targets[k], records, errors))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                k += 1
            if len(in_flight) >= PUBLISH_IN_FLIGHT:
                await asyncio.wait(set(in_flight), return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(0)
        if in_flight:
            await asyncio.wait(set(in_flight))
        done = [r for r in records if r is not None]
        span = (done[-1][2] - done[0][2]) / 1e9 if len(done) > 1 else 0.0
        return {"records": done, "errors": dict(errors), "elapsed": time.perf_counter() - start,
                "achieved_rate": (len(done) - 1) / span if span > 0 else None, "cpu": own_cpu_seconds() - cpu0}

    async def serve(self) -> None:
        print(json.dumps({"ready": True}), flush=True)
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                break
            command = json.loads(line)
            if command.get("cmd") != "run":
                break
            sys.stdout.write(json.dumps(await self.run(command)) + "\n")
            sys.stdout.flush()
        await self.redis.aclose()


async def publisher_main(kind: str, redis_url: str, users: list[str]) -> None:
    await PublisherChild(kind, redis_url, users).serve()


class Publisher:
    """The publisher child of one run."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, target: Target) -> Publisher:
        users_file = target.workdir / "users.json"
        users_file.write_text(json.dumps(target.user_ids))
        log = open(target.workdir / "publisher.log", "ab")  # noqa: ASYNC230 (once per run; the child inherits it)
        process = await asyncio.create_subprocess_exec(
            sys.executable, THIS_FILE, "--publisher-mode", target.kind, "--app-dir", str(target.app_dir),
            "--redis-url", target.redis.url, "--users-file", str(users_file),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=target.app_dir, preexec_fn=_child_setup,
            limit=256 * 1024 * 1024,
        )
        log.close()
        publisher = cls(process)
        line = await asyncio.wait_for(process.stdout.readline(), 60)  # type: ignore[union-attr]
        if not line or not json.loads(line).get("ready"):
            raise RuntimeError(f"the publisher did not start:\n{tail(target.workdir / 'publisher.log')}")
        return publisher

    @property
    def pid(self) -> int:
        return self.process.pid

    async def send(self, mode: str, rate: float, count: int, users: int, seed: int) -> None:
        """Publish `count` events at `rate`/s: to `broadcast`, or each to one of the first `users` users."""
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps({"cmd": "run", "mode": mode, "rate": rate, "count": count,
                                              "users": users, "seed": seed}) + "\n").encode())
        await self.process.stdin.drain()

    async def result(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            raise RuntimeError("the publisher exited")
        result: dict[str, Any] = json.loads(line)
        return result

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(Exception):
                self.process.stdin.write(b'{"cmd": "quit"}\n')  # type: ignore[union-attr]
                await self.process.stdin.drain()  # type: ignore[union-attr]
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


# --------------------------------------------------------------------------------------------------
# Measuring


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    rank = max(1, -(-int(q * len(sorted_values) * 1000) // 1000))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class Scenario:
    name: str
    mode: str
    rate: float
    count: int
    published: int = 0
    publish_errors: dict[str, int] = field(default_factory=dict)
    achieved_rate: float | None = None
    expected: int = 0
    delivered: int = 0              # distinct (stream, id) deliveries that were expected
    received: int = 0               # every event frame received, duplicates included
    lost: int = 0
    lost_streams: int = 0
    duplicated: int = 0
    unexpected: int = 0
    p50: float | None = None
    p99: float | None = None
    max: float | None = None
    window: float = 0.0             # seconds from publishing start to the last delivery
    elapsed: float = 0.0            # seconds from publishing start to the end of the accounting
    server_cpu: float | None = None
    server_user: float | None = None
    server_sys: float | None = None
    server_cpu_net: float | None = None
    client_cpu: float | None = None
    publisher_cpu: float | None = None
    redis_cpu: float | None = None
    machine_cpu: float | None = None
    drained: bool = True
    heartbeats: int = 0             # heartbeat comments received by all streams during the scenario

    @property
    def us_per_event(self) -> float | None:
        return None if self.server_cpu is None or not self.delivered else self.server_cpu * 1e6 / self.delivered

    @property
    def us_per_event_net(self) -> float | None:
        return None if self.server_cpu_net is None or not self.delivered else self.server_cpu_net * 1e6 / self.delivered

    @property
    def passed(self) -> bool:
        rate_ok = self.achieved_rate is None or self.achieved_rate >= 0.9 * self.rate
        return (self.p99 is not None and self.p99 < P99_TARGET_MS and self.lost == 0 and self.duplicated == 0
                and self.unexpected == 0 and rate_ok and self.published == self.count)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items()}
        out.update(us_per_event=self.us_per_event, us_per_event_net=self.us_per_event_net, passed=self.passed)
        return out


@dataclass
class RunResult:
    kind: str
    n: int
    pid: int
    connected: int = 0
    connect_failures: dict[str, int] = field(default_factory=dict)
    ramp_seconds: float = 0.0
    connect_p50: float | None = None
    connect_p99: float | None = None
    connect_max: float | None = None
    ramp_server_cpu: float | None = None
    rss_before_kib: int | None = None
    rss_idle_kib: int | None = None
    rss_peak_kib: int | None = None
    idle_seconds: float = 0.0
    idle_cpu: float | None = None
    idle_heartbeats: int = 0
    scenarios: list[Scenario] = field(default_factory=list)
    best_rate: float | None = None
    dropped: int = 0
    control: dict[str, int] = field(default_factory=dict)
    unreadable: int = 0
    log_tracebacks: int = 0
    log_errors: int = 0
    log_first: str = ""
    profile: str = ""
    diag: dict[str, Any] = field(default_factory=dict)   # label -> the server's diagnostic dump
    error: str = ""

    @property
    def kib_per_stream(self) -> float | None:
        if self.rss_idle_kib is None or self.rss_before_kib is None or not self.connected:
            return None
        return (self.rss_idle_kib - self.rss_before_kib) / self.connected

    @property
    def idle_cpu_percent(self) -> float | None:
        return None if self.idle_cpu is None or not self.idle_seconds else self.idle_cpu / self.idle_seconds * 100

    def scenario(self, name: str) -> Scenario | None:
        return next((s for s in self.scenarios if s.name == name), None)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "scenarios"}
        out.update(kib_per_stream=self.kib_per_stream, idle_cpu_percent=self.idle_cpu_percent,
                   scenarios=[s.as_dict() for s in self.scenarios])
        return out


async def connect_all(fleet: Fleet, run: RunResult, n: int, args: argparse.Namespace, target: Target) -> None:
    window = asyncio.Semaphore(args.connect_window)
    times: list[float] = []
    failures: Counter[str] = Counter()
    samples: list[str] = []

    async def one(index: int) -> None:
        async with window:
            try:
                times.append(await fleet.open(index, args.connect_timeout))
            except Exception as exc:
                label = "timeout" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}"
                failures[label] += 1
                if len(samples) < 3:
                    samples.append(f"{label}: {exc}")

    cpu0 = cpu_seconds(target.pid)
    started = time.perf_counter()
    tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
    _done, pending = await asyncio.wait(tasks, timeout=args.phase_timeout)
    for task in pending:
        task.cancel()
    if pending:
        failures["phase timeout"] += len(pending)
        await asyncio.wait(pending)
    run.ramp_seconds = time.perf_counter() - started
    cpu1 = cpu_seconds(target.pid)
    run.ramp_server_cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    times.sort()
    run.connected = len(times)
    run.connect_failures = dict(failures)
    run.connect_p50, run.connect_p99 = percentile(times, 0.50), percentile(times, 0.99)
    run.connect_max = times[-1] if times else None
    if samples:
        run.error += "connect failures, e.g.: " + " | ".join(samples) + "\n"


async def run_scenario(name: str, mode: str, rate: float, count: int, fleet: Fleet, publisher: Publisher,
                       target: Target, run: RunResult, args: argparse.Namespace, seed: int) -> Scenario:
    scenario = Scenario(name, mode, rate, count)
    fleet.reset()
    gc.collect()
    gc.disable()   # no collector pauses in the client while it timestamps deliveries
    streams = fleet.open_streams
    pids = (target.pid, publisher.pid, target.redis_pid)
    server0 = cpu_times(target.pid)
    pub0, redis0 = cpu_seconds(publisher.pid), cpu_seconds(target.redis_pid)
    client0, machine0 = own_cpu_seconds(), machine_busy_seconds()
    heartbeats0 = fleet.heartbeats
    started = time.perf_counter()
    try:
        await publisher.send(mode, rate, count, run.n, seed)
        result = await publisher.result(count / rate + args.phase_timeout)
        records = result["records"]
        scenario.published = len(records)
        scenario.publish_errors = result["errors"]
        scenario.achieved_rate = result["achieved_rate"]
        if mode == "broadcast":
            expected_total = len(records) * len(streams)
        else:
            expected_total = len(records)
        # Drain: until everything arrived, nothing arrived for `quiet` s, or the drain timeout.
        deadline = time.perf_counter() + args.drain_timeout
        last_count, last_progress = fleet.received, time.perf_counter()
        server_at_last = cpu_times(target.pid)
        at_last = time.perf_counter()
        while fleet.received < expected_total and time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
            if fleet.received != last_count:
                last_count, last_progress = fleet.received, time.perf_counter()
                server_at_last, at_last = cpu_times(target.pid), last_progress
            elif time.perf_counter() - last_progress > args.quiet:
                break
        if fleet.received >= expected_total:
            server_at_last, at_last = cpu_times(target.pid), time.perf_counter()
        scenario.drained = fleet.received >= expected_total
    finally:
        gc.enable()
    scenario.window = at_last - started
    if server0 and server_at_last:
        scenario.server_user = server_at_last[0] - server0[0]
        scenario.server_sys = server_at_last[1] - server0[1]
        scenario.server_cpu = scenario.server_user + scenario.server_sys
        if run.idle_cpu is not None and run.idle_seconds:
            scenario.server_cpu_net = max(0.0, scenario.server_cpu - run.idle_cpu / run.idle_seconds * scenario.window)
    pub1, redis1 = cpu_seconds(pids[1]), cpu_seconds(pids[2])
    scenario.publisher_cpu = result.get("cpu") if pub0 is None or pub1 is None else pub1 - pub0
    scenario.redis_cpu = None if redis0 is None or redis1 is None else redis1 - redis0
    scenario.client_cpu = own_cpu_seconds() - client0
    scenario.machine_cpu = machine_busy_seconds() - machine0
    scenario.elapsed = time.perf_counter() - started
    scenario.heartbeats = fleet.heartbeats - heartbeats0

    # Who got what: by envelope id, per stream.
    all_ids = [r[0].encode() for r in records]
    by_target: dict[int, list[bytes]] = {}
    if mode != "broadcast":
        for event_id, target_index, _ in records:
            by_target.setdefault(target_index, []).append(event_id.encode())
    expected = delivered = lost = lost_streams = duplicated = unexpected = 0
    open_at_start = set(streams)
    for index, stream in enumerate(fleet.streams):
        if stream is None:
            continue
        if mode == "broadcast" and stream not in open_at_start:
            continue  # it was not open when the scenario started
        wanted = all_ids if mode == "broadcast" else by_target.get(index, [])
        seen = stream.seen
        missing = sum(1 for event_id in wanted if event_id not in seen)
        expected += len(wanted)
        delivered += len(wanted) - missing
        lost += missing
        lost_streams += 1 if missing else 0
        if seen:
            duplicated += sum(c - 1 for c in seen.values() if c > 1)
            wanted_set = set(wanted)
            unexpected += sum(1 for event_id in seen if event_id not in wanted_set)
    if mode != "broadcast":  # events for users whose stream never opened are lost too
        for target_index, ids in by_target.items():
            if fleet.streams[target_index] is None:
                expected += len(ids)
                lost += len(ids)
                lost_streams += 1
    scenario.expected, scenario.delivered, scenario.lost = expected, delivered, lost
    scenario.lost_streams, scenario.duplicated, scenario.unexpected = lost_streams, duplicated, unexpected
    scenario.received = fleet.received
    latencies = sorted(x / 1e6 for x in fleet.latencies)
    scenario.p50, scenario.p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    scenario.max = latencies[-1] if latencies else None
    fleet.reset()
    return scenario


async def py_spy(pid: int, seconds: float, out: Path, native: bool) -> asyncio.subprocess.Process:
    exe = Path(sys.executable).with_name("py-spy")
    return await asyncio.create_subprocess_exec(
        str(exe if exe.exists() else "py-spy"), "record", "--pid", str(pid), "--duration", str(int(seconds)),
        "--rate", "250", "--format", "raw", "--output", str(out), *(["--native"] if native else ["--nonblocking"]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_child_setup)


def summarize_profile(path: Path, top: int = 18) -> str:
    """Self and inclusive sample shares by function, from py-spy's collapsed stacks."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return f"(no profile: {path} missing; is py-spy installed and allowed to ptrace?)"
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [re.sub(r":\d+\)$", ")", f.strip()) for f in stack.split(";")]
        frames = [f.replace(str(REPO) + "/", "").replace(sys.prefix + "/lib/python3.11/site-packages/", "")
                  for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "(no samples)"
    out = [f"{total} samples at 250 Hz (~{total / 250:.1f} s of CPU in Python frames)",
           "  self %  function (file)"]
    out += [f"  {100 * c / total:6.1f}  {f}" for f, c in own.most_common(top)]
    out.append("  incl %  function (file)   [frames in more than 80 % of the samples, the loop itself, left out]")
    out += [f"  {100 * c / total:6.1f}  {f}" for f, c in inclusive.most_common()
            if c <= 0.8 * total][:top + 6]
    return "\n".join(out)


async def profile_target(fleet: Fleet, publisher: Publisher, target: Target, run: RunResult,
                         args: argparse.Namespace, plan: Plan) -> str:
    """An extra broadcast and idle period under py-spy (after the measured ones, not during them)."""
    texts = []
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for label, seconds in (("broadcast", plan.broadcast_count / plan.broadcast_rate + 4), ("idle", plan.idle_seconds)):
        out = results / f"pyspy-{target.kind}-{run.n}-{label}-{stamp}.txt"
        spy = await py_spy(target.pid, seconds, out, args.native)
        await asyncio.sleep(1.0)
        if label == "broadcast":
            await run_scenario("profiled broadcast", "broadcast", plan.broadcast_rate, plan.broadcast_count, fleet,
                               publisher, target, run, args, seed=99)
        try:
            await asyncio.wait_for(spy.wait(), seconds + 30)
        except TimeoutError:
            spy.kill()
            await spy.wait()
        texts.append(f"-- py-spy of the {target.kind} server, {run.n} streams, during {label} "
                     f"({out.relative_to(REPO)}) --\n{summarize_profile(out)}")
    return "\n".join(texts)


async def diag_dump(target: Target, run: RunResult, label: str, args: argparse.Namespace) -> None:
    """With --gc-stats/--tracemalloc: ask the server's wrapper for a dump (SIGUSR1) and keep it."""
    if not (args.gc_stats or args.tracemalloc or args.gc_freeze):
        return
    number = len(run.diag) + 1
    path = target.workdir / f"diag.{number}"
    os.kill(target.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 120
    while not path.exists() and time.monotonic() < deadline:  # noqa: ASYNC110 (another process writes it)
        await asyncio.sleep(0.1)
    if path.exists():
        run.diag[label] = json.loads(path.read_text())
        run.diag[label]["cpu"] = cpu_seconds(target.pid)


def diag_report(run: RunResult, top: int = 15) -> str:
    """GC time per phase, gc-tracked objects per stream, and the Python allocations of the idle streams."""
    if not run.diag:
        return ""
    out = [f"-- diagnostics of the {run.kind} server, {run.n} streams (garbage collector, allocations) --"]
    labels = list(run.diag)
    for first, second in itertools.pairwise(labels):
        a, b = run.diag[first], run.diag[second]
        gc_s = [b["gc_time"][g] - a["gc_time"][g] for g in range(3)]
        runs = [b["gc_runs"][g] - a["gc_runs"][g] for g in range(3)]
        cpu = (b["cpu"] or 0) - (a["cpu"] or 0)
        out.append(f"{first} -> {second}: server CPU {cpu:.2f} s, of which garbage collection {sum(gc_s):.2f} s "
                   f"({100 * sum(gc_s) / cpu if cpu else 0:.0f} %); collections gen0/1/2 {runs[0]}/{runs[1]}/{runs[2]} "
                   f"taking {gc_s[0]:.3f}/{gc_s[1]:.3f}/{gc_s[2]:.3f} s")
    before, idle = run.diag.get("before connecting"), run.diag.get("idle streams open")
    if before and idle and run.connected:
        out.append(f"gc-tracked objects: {before['gc_objects']} before connecting, {idle['gc_objects']} with "
                   f"{run.connected} streams = {(idle['gc_objects'] - before['gc_objects']) / run.connected:.0f} per "
                   f"stream; thresholds {idle['gc_threshold']}")
        if "lines" in before and "lines" in idle:
            old = {(f, ln): (size, count) for f, ln, size, count in before["lines"]}
            diffs = []
            for f, ln, size, count in idle["lines"]:
                size0, count0 = old.get((f, ln), (0, 0))
                diffs.append((size - size0, count - count0, f, ln))
            diffs.sort(reverse=True)
            total = sum(d[0] for d in diffs)
            out.append(f"Python allocations (tracemalloc) grew by {total / 1024 / run.connected:.2f} KiB per stream "
                       f"(RSS: {run.kib_per_stream or 0:.2f} KiB per stream); largest, per stream:")
            for size, count, f, ln in diffs[:top]:
                short = f.replace(str(REPO) + "/", "").replace(sys.prefix + "/lib/python3.11/site-packages/", "")
                out.append(f"  {size / run.connected:8.0f} B  {count / run.connected:6.2f} blocks  {short}:{ln}")
    return "\n".join(out)


@dataclass
class Plan:
    idle_seconds: float
    broadcast_rate: float
    broadcast_count: int
    targeted_rate: float
    targeted_seconds: float
    steps: list[float]
    step_seconds: float
    after_seconds: float    # the 200/s probe right after the broadcast: longer than the heartbeat interval


def check_alive(target: Target) -> None:
    code = target.process.poll()
    if code is not None:
        raise RuntimeError(f"the server process exited during the run (code {code}"
                           f"{', i.e. SIGTERM from outside this benchmark' if code == -signal.SIGTERM else ''})")


async def scenarios(fleet: Fleet, publisher: Publisher, target: Target, run: RunResult, args: argparse.Namespace,
                    plan: Plan) -> None:
    """(b) targeted and the step search, then (a) broadcast and the probe after it, in that order: the
    step search runs while the heartbeats are still spread out as the ramp left them (a broadcast
    writes to every stream at once and so lines up their heartbeat timers); the probe after the
    broadcast shows what the lined-up heartbeats do."""
    name, n = target.kind, run.n
    print(f"  [{name} N={n}] targeted ...", flush=True)
    run.scenarios.append(await run_scenario(
        "targeted", "targeted", plan.targeted_rate, int(plan.targeted_rate * plan.targeted_seconds), fleet,
        publisher, target, run, args, seed=2))
    check_alive(target)
    for step, rate in enumerate(plan.steps):
        await asyncio.sleep(1.0)
        scenario = await run_scenario(f"step {rate:g}/s", "targeted", rate, int(rate * plan.step_seconds), fleet,
                                      publisher, target, run, args, seed=10 + step)
        run.scenarios.append(scenario)
        check_alive(target)
        p99 = "n/a" if scenario.p99 is None else f"{scenario.p99:.1f} ms"
        print(f"  [{name} N={n}] step {rate:g}/s: p99 {p99}, lost {scenario.lost}, "
              f"rate {scenario.achieved_rate or 0:.0f}/s -> {'pass' if scenario.passed else 'FAIL'}", flush=True)
        if not scenario.passed:
            break
        run.best_rate = rate
    await asyncio.sleep(1.0)
    await diag_dump(target, run, "before broadcast", args)
    print(f"  [{name} N={n}] broadcast ...", flush=True)
    run.scenarios.append(await run_scenario(
        "broadcast", "broadcast", plan.broadcast_rate, plan.broadcast_count, fleet, publisher, target, run,
        args, seed=1))
    check_alive(target)
    await diag_dump(target, run, "after broadcast", args)
    print(f"  [{name} N={n}] targeted probe after the broadcast ...", flush=True)
    run.scenarios.append(await run_scenario(
        "after broadcast", "targeted", plan.targeted_rate, int(plan.targeted_rate * plan.after_seconds), fleet,
        publisher, target, run, args, seed=3))
    check_alive(target)


async def measure(target: Target, n: int, args: argparse.Namespace, plan: Plan) -> RunResult:
    run = RunResult(target.kind, n, target.pid)
    fleet = Fleet(target.port, target.tokens)
    publisher = await Publisher.start(target)
    try:
        # Warm-up: one stream (the extra user) opened and closed, so lazy imports and first-use
        # allocations are in the "before" figure.
        warm = Fleet(target.port, target.tokens[n:n + 1])
        await warm.open(0, args.connect_timeout)
        await asyncio.sleep(0.5)
        warm.close()
        await asyncio.sleep(1.0)
        run.rss_before_kib = rss_kib(target.pid)
        await diag_dump(target, run, "before connecting", args)
        print(f"  [{target.kind} N={n}] connecting ...", flush=True)
        await connect_all(fleet, run, n, args, target)
        print(f"  [{target.kind} N={n}] {run.connected} open in {run.ramp_seconds:.1f} s; settling, then "
              f"{plan.idle_seconds:.0f} s idle ...", flush=True)
        await asyncio.sleep(args.settle)
        run.rss_idle_kib = rss_kib(target.pid)
        await diag_dump(target, run, "idle streams open", args)
        if args.gc_freeze:  # what-if: move every object alive now out of the collector's reach
            os.kill(target.pid, signal.SIGUSR2)
            await asyncio.sleep(3.0)
        heart0 = fleet.heartbeats
        cpu0 = cpu_seconds(target.pid)
        started = time.perf_counter()
        await asyncio.sleep(plan.idle_seconds)
        cpu1 = cpu_seconds(target.pid)
        run.idle_seconds = time.perf_counter() - started
        run.idle_cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
        run.idle_heartbeats = fleet.heartbeats - heart0
        await diag_dump(target, run, "after idle", args)

        try:
            await scenarios(fleet, publisher, target, run, args, plan)
        except Exception as exc:  # keep what was measured; the report shows the error
            run.error += f"stopped early: {type(exc).__name__}: {exc}\n"
        run.rss_peak_kib = rss_kib(target.pid, "VmHWM")
        await diag_dump(target, run, "end", args)
        if args.profile:
            print(f"  [{target.kind} N={n}] profiling with py-spy ...", flush=True)
            run.profile = await profile_target(fleet, publisher, target, run, args, plan)
        run.dropped = fleet.dropped
        run.control = dict(fleet.control)
        run.unreadable = fleet.unreadable
    finally:
        fleet.close()
        await publisher.stop()
    return run


# --------------------------------------------------------------------------------------------------
# Reporting


def fmt(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None, digits: int = 2) -> str:
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.{digits}f}"


def scenario_row(run: RunResult, s: Scenario) -> list[str]:
    return [f"{run.kind} {run.n}", s.name, f"{s.published}/{s.count}", fmt(s.achieved_rate, 0), str(s.expected),
            str(s.lost), str(s.duplicated), str(s.unexpected), fmt(s.p50), fmt(s.p99), fmt(s.max),
            fmt(s.server_cpu, 2), fmt(s.server_sys, 2), fmt(s.us_per_event), fmt(s.us_per_event_net),
            fmt(s.client_cpu, 2), fmt(s.publisher_cpu, 2), fmt(s.redis_cpu, 2),
            fmt(None if s.machine_cpu is None or not s.elapsed else s.machine_cpu / s.elapsed * 100, 0),
            str(s.heartbeats)]


def report(runs: list[RunResult], args: argparse.Namespace, plan: Plan, elapsed: float) -> str:
    out = []
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    out.append(f"machine: {os.cpu_count()} cores ({platform.machine()}, Linux {platform.release()}), Python "
               f"{platform.python_version()}; client, publisher, Redis and server share these cores; load average "
               f"now {load}")
    out.append(f"Bookwire code measured: {args.code}")
    if args.code_after != args.code:
        out.append(f"!! the code changed during the run: now {args.code_after}; use --app-dir with a snapshot")
    out.append(f"plan: idle {plan.idle_seconds:g} s; broadcast {plan.broadcast_count} events at "
               f"{plan.broadcast_rate:g}/s; targeted {plan.targeted_rate:g}/s for {plan.targeted_seconds:g} s; "
               f"steps {', '.join(f'{r:g}' for r in plan.steps)} /s x {plan.step_seconds:g} s; after the broadcast "
               f"{plan.targeted_rate:g}/s for {plan.after_seconds:g} s; connect window {args.connect_window}")
    out.append("")
    out.append("== connect, memory, idle ==")
    rows = []
    for r in runs:
        rate = r.connected / r.ramp_seconds if r.ramp_seconds else None
        cpu_per_conn = None if r.ramp_server_cpu is None or not r.connected else r.ramp_server_cpu * 1000 / r.connected
        rows.append([f"{r.kind} {r.n}", f"{r.connected}/{r.n}", fmt(r.ramp_seconds), fmt(rate, 0),
                     fmt(r.connect_p50), fmt(r.connect_p99), fmt(r.connect_max), fmt(cpu_per_conn, 2),
                     fmt(None if r.rss_before_kib is None else r.rss_before_kib / 1024),
                     fmt(None if r.rss_idle_kib is None else r.rss_idle_kib / 1024), fmt(r.kib_per_stream, 2),
                     fmt(r.idle_cpu_percent, 2), str(r.idle_heartbeats)])
    out.append(table(["server N", "open", "ramp s", "conn/s", "conn p50 ms", "p99 ms", "max ms", "CPU ms/conn",
                      "RSS0 MiB", "RSS MiB", "KiB/stream", "idle CPU %", "heartbeats"], rows))
    out.append("")
    out.append("== scenarios (latency = receive - publish time, ms; CPU in seconds during the scenario) ==")
    rows = [scenario_row(r, s) for r in runs for s in r.scenarios if not s.name.startswith("profiled")]
    out.append(table(["server N", "scenario", "published", "pub/s", "expected", "lost", "dup", "unexp", "p50",
                      "p99", "max", "srv CPU", "srv sys", "us/event", "net us/ev", "client", "pub", "redis",
                      "machine %", "hb"], rows))
    out.append("us/event = server CPU / events delivered; net = minus the idle CPU rate over the same window; "
               "srv sys = the server's kernel share; client/pub/redis = CPU s of this client, the publisher and "
               "redis-server; machine % = busy share of all cores x 100 (200 = both cores busy); hb = heartbeat "
               "comments received during the scenario")
    out.append("")
    out.append("== summary: highest targeted rate (events/s) with p99 < 100 ms, no loss, rate reached ==")
    for r in runs:
        out.append(f"{r.kind:<9} {r.n:>6}: {fmt(r.best_rate, 0) if r.best_rate else 'below ' + str(plan.steps[0])}"
                   + (f"   (dropped streams {r.dropped}, control events {r.control}, unreadable {r.unreadable})"
                      if r.dropped or r.control or r.unreadable else ""))
    sizes = sorted({r.n for r in runs})
    pairs = [(next((r for r in runs if r.kind == "bookwire" and r.n == n), None),
              next((r for r in runs if r.kind == "baseline" and r.n == n), None)) for n in sizes]
    pairs = [(b, a) for b, a in pairs if b and a]
    if pairs:
        out.append("")
        out.append("== ratios Bookwire / baseline (below 1 = Bookwire better, except the rate: above 1) ==")
        rows = []
        for b, a in pairs:
            bb, ab = b.scenario("broadcast"), a.scenario("broadcast")
            bt, at = b.scenario("targeted"), a.scenario("targeted")
            rows.append([str(b.n), ratio(b.connect_p99, a.connect_p99), ratio(b.ramp_seconds, a.ramp_seconds),
                         ratio(b.kib_per_stream, a.kib_per_stream), ratio(b.idle_cpu_percent, a.idle_cpu_percent),
                         ratio(bb and bb.p50, ab and ab.p50), ratio(bb and bb.p99, ab and ab.p99),
                         ratio(bb and bb.us_per_event, ab and ab.us_per_event),
                         ratio(bt and bt.p99, at and at.p99),
                         ratio(bt and bt.us_per_event_net, at and at.us_per_event_net),
                         ratio(b.best_rate, a.best_rate)])
        out.append(table(["N", "conn p99", "ramp", "KiB/stream", "idle CPU", "bcast p50", "bcast p99",
                          "bcast us/ev", "tgt p99", "tgt net us/ev", "max rate"], rows))
    bookwire = [r for r in runs if r.kind == "bookwire"]
    if bookwire:
        out.append("")
        out.append("== Bookwire against its targets ==")
        for r in bookwire:
            b = r.scenario("broadcast")
            checks = [
                ("memory per idle stream <= 12 KiB", r.kib_per_stream, lambda v: v <= 12, "KiB"),
                ("CPU per delivered event (broadcast) <= 12 us", b and b.us_per_event, lambda v: v <= 12, "us"),
            ]
            if r.n >= 10000:
                checks += [
                    ("broadcast p99 < 200 ms", b and b.p99, lambda v: v < 200, "ms"),
                    ("idle CPU < 2 % of a core", r.idle_cpu_percent, lambda v: v < 2, "%"),
                ]
            for label, value, ok, unit in checks:
                verdict = "n/a" if value is None else ("ok" if ok(value) else "MISSED")
                out.append(f"N={r.n:>6} {label:<46} {fmt(value, 2):>8} {unit:<3} {verdict}")
    for r in runs:
        if r.connect_failures or r.log_tracebacks or r.error:
            out.append(f"!! {r.kind} {r.n}: connect failures {r.connect_failures}; server log {r.log_tracebacks} "
                       f"tracebacks, {r.log_errors} ERROR/WARNING lines; {r.error.strip()}")
            if r.log_first:
                out.append(r.log_first)
    for r in runs:
        if r.profile:
            out.append("")
            out.append(r.profile)
        if r.diag:
            out.append("")
            out.append(diag_report(r))
    out.append("")
    out.append(f"total time {elapsed:.0f} s")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# Main


def run_one(kind: str, n: int, args: argparse.Namespace, plan: Plan, workroot: Path) -> RunResult:
    workdir = workroot / f"{kind}-{n}"
    print(f"[{kind} N={n}] starting a private Redis and the server ...", flush=True)
    diag = "tracemalloc" if args.tracemalloc else "gc" if args.gc_stats or args.gc_freeze else None
    target = start_target(kind, n, workdir, args.app_dir, diag)
    try:
        print(f"[{kind} N={n}] pid {target.pid} on port {target.port}", flush=True)
        try:
            run = uvloop_run(measure(target, n, args, plan))
        except Exception as exc:
            run = RunResult(kind, n, target.pid, error=f"run failed: {type(exc).__name__}: {exc}")
        alive = target.process.poll() is None
        target.stop()
        run.log_tracebacks, run.log_errors, run.log_first = log_problems(target.log)
        if not alive:
            run.error += f" server exited during the run (code {target.process.returncode})"
        if args.keep_logs or run.log_tracebacks or run.error:
            kept = REPO / "bench" / "results" / f"sse-{kind}-{n}-{time.strftime('%Y%m%d-%H%M%S')}.log"
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(target.log, kept)
            run.error += f" (server log kept in {kept.relative_to(REPO)})"
        return run
    finally:
        target.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=None, help="comma-separated stream counts (default 1000,5000,10000)")
    parser.add_argument("--only", choices=["bookwire", "baseline", "both"], default="both")
    parser.add_argument("--quick", action="store_true", help="sanity run: N=1000 and shorter scenarios")
    parser.add_argument("--idle-seconds", type=float, default=None, help="idle CPU measurement (default 20)")
    parser.add_argument("--connect-window", type=int, default=64, help="connections being set up at once (64)")
    parser.add_argument("--connect-timeout", type=float, default=30.0, help="per connection, seconds (30)")
    parser.add_argument("--phase-timeout", type=float, default=240.0,
                        help="seconds for the whole connect ramp, and added to each publish plan (240)")
    parser.add_argument("--drain-timeout", type=float, default=30.0,
                        help="seconds to wait for deliveries after the last publish (30)")
    parser.add_argument("--quiet", type=float, default=3.0,
                        help="stop waiting for deliveries after this many seconds without any (3)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between the ramp and the RSS reading (3)")
    parser.add_argument("--profile", action="store_true",
                        help="after measuring, py-spy the server during an extra broadcast and idle period")
    parser.add_argument("--native", action="store_true",
                        help="with --profile: also sample C frames (py-spy --native; pauses the server while sampling)")
    parser.add_argument("--gc-stats", action="store_true",
                        help="diagnostic: run the server under a wrapper that times its garbage collections")
    parser.add_argument("--gc-freeze", action="store_true",
                        help="what-if (implies --gc-stats): once the streams are open and the memory is read, "
                             "make the server run gc.collect(); gc.freeze() (no change to its code)")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="diagnostic: as --gc-stats, plus Python allocations per source line for the idle "
                             "streams (slows the server: only the memory figures of such a run mean anything)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--keep-logs", action="store_true", help="copy each server log to bench/results/")
    parser.add_argument("--app-dir", type=Path, default=REPO,
                        help="the Bookwire code to measure (default: this repository); e.g. a `git archive` of one "
                             "commit, so that edits in the work tree during a run do not change what is measured")
    parser.add_argument("--publisher-mode", choices=["bookwire", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--users-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.app_dir = args.app_dir.resolve()
    if not (args.app_dir / "app" / "cli.py").exists():
        parser.error(f"--app-dir {args.app_dir}: no app/cli.py there")
    if args.sizes is None:
        args.sizes = "1000" if args.quick else "1000,5000,10000"
    try:
        args.size_list = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error("--sizes: comma-separated whole numbers")
    if not args.size_list or min(args.size_list) < 1 or max(args.size_list) > 25000:
        parser.error("--sizes: between 1 and 25000 streams (one loopback client address has ~28,000 ports)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit()
    if args.publisher_mode:
        # Publish with the `app` of --app-dir: forget the one imported above (for EmbeddedRedis).
        for name in [m for m in sys.modules if m == "app" or m.startswith("app.")]:
            del sys.modules[name]
        sys.path.insert(0, str(args.app_dir.resolve()))
        users = json.loads(Path(args.users_file).read_text())
        uvloop_run(publisher_main(args.publisher_mode, args.redis_url, users))
        return 0
    interrupt_on_sigterm()
    if args.quick:
        plan = Plan(idle_seconds=args.idle_seconds or 5, broadcast_rate=5, broadcast_count=10, targeted_rate=200,
                    targeted_seconds=3, steps=[200, 1000, 4000], step_seconds=2, after_seconds=17)
    else:
        plan = Plan(idle_seconds=args.idle_seconds or 20, broadcast_rate=5, broadcast_count=20, targeted_rate=200,
                    targeted_seconds=10, steps=[200, 500, 1000, 2000, 4000], step_seconds=5,
                    after_seconds=20)
    kinds = ["bookwire", "baseline"] if args.only == "both" else [args.only]
    if "baseline" in kinds:
        try:
            import fastapi  # noqa: F401
            import sse_starlette  # noqa: F401
        except ImportError:
            print("the baseline needs fastapi and sse-starlette: .venv/bin/pip install fastapi sse-starlette",
                  file=sys.stderr)
            return 2
    started = time.monotonic()
    busy0 = machine_busy_seconds()
    time.sleep(1.0)
    idle_load = machine_busy_seconds() - busy0
    print(f"bench/sse.py: sizes {args.size_list}, servers {kinds}, {os.cpu_count()} cores, fd limit "
          f"{resource.getrlimit(resource.RLIMIT_NOFILE)[0]}; before starting, the machine was busy "
          f"{idle_load:.2f} of {os.cpu_count()} cores", flush=True)
    if idle_load > 0.2:
        print("!! other processes are using the CPU: figures will be worse and noisier", flush=True)
    args.code = describe_code(args.app_dir)
    print(f"Bookwire code measured: {args.code}", flush=True)
    workroot = Path(tempfile.mkdtemp(prefix="bookwire-sse-bench-"))
    runs: list[RunResult] = []
    interrupted = None
    try:
        for n in args.size_list:
            for kind in kinds:
                runs.append(run_one(kind, n, args, plan, workroot))
                time.sleep(2.0)  # let the previous server's sockets and memory go
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the children are stopped; report what is done
        interrupted = str(exc) or "Ctrl-C"
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    args.code_after = describe_code(args.app_dir)
    text = report(runs, args, plan, time.monotonic() - started)
    if interrupted:
        text += f"\n!! interrupted ({interrupted}) after {len(runs)} of {len(args.size_list) * len(kinds)} runs"
    print("\n" + text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"sizes": args.size_list, "plan": plan.__dict__, "cores": os.cpu_count(),
                                         "code": args.code, "code_after": args.code_after,
                                         "runs": [r.as_dict() for r in runs]}, indent=2, default=str))
    ok = all(not r.error and r.connected == r.n and not r.log_tracebacks
             and all(s.lost == 0 and s.duplicated == 0 for s in r.scenarios if not s.name.startswith("step"))
             for r in runs)
    return 130 if interrupted else 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; the servers, Redis and the publishers were stopped", file=sys.stderr)
        sys.exit(130)
