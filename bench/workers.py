"""Reminder lateness under a burst, and email throughput of one worker (issue 4, "Benchmark").

    .venv/bin/python bench/workers.py [--reminders 1000] [--workers 2] [--schedulers 1]
    .venv/bin/python bench/workers.py --workers 1,2,4          # phase (a) once per worker count
    .venv/bin/python bench/workers.py --workers 2 --profile    # where the workers' CPU goes (py-spy)

It starts everything it needs and removes it afterwards: a private redis-server (EmbeddedRedis, no
persistence), a fresh SQLite file in a temporary folder, `bookwire migrate`, one `bookwire api`
(one uvicorn worker) on a free loopback port, and for each run `--workers` `bookwire worker` and
`--schedulers` `bookwire scheduler` processes, exactly as production runs them. Every child gets
PR_SET_PDEATHSIG; everything is stopped in `finally` blocks (also on Ctrl-C / SIGTERM).

(a) Reminder lateness. Users are inserted straight into the database (argon2 is slow by design) and
    get JWTs minted with JWT_SECRET. Each provider creates one resource (`requires_confirmation`
    false, so a booking is confirmed at once); customers book them through `POST /v1/bookings`.
    The API runs with REMINDER_PROVIDER_OFFSETS = REMINDER_CUSTOMER_OFFSETS = `--offsets`
    (1s,...,5s), so every booking yields 10 reminders through the real planning code; bookings
    start at T0+5 s or T0+10 s, so the due times fill [T0, T0+10 s) evenly, 100 per second with
    the defaults, T0 being `--lead` seconds after setup began. (With `--jitter` each start also
    gets a random fraction of a second, so that JobQueue's rounding up to whole seconds shows.)
    The firing path is the real one: rq-scheduler -> RQ queue `default` -> RQ worker ->
    workers.jobs.fire_due_reminders -> Redis stream -> the API's SSE hub. One raw-socket SSE
    stream per recipient (`GET /v1/events/stream`) records the arrival of every `reminder.due`.
    Lateness = arrival - the reminder's `due_at` (from the `reminders` table). Missed = a
    reminder without an event; doubled = more than one event for one reminder id.
    "Where the time goes" splits every reminder with RQ's own job timestamps (kept an hour):
    rounding (due_at up to the whole second the job is scheduled for), scheduler (that second ->
    RQ `enqueued_at`), queue (-> `started_at`: waiting for a free worker), publish (-> the event's
    id, which is Redis's clock at XADD), delivery (-> arrival on the SSE socket); and the job's own length
    (`started_at` -> `ended_at`). CPU columns: all worker processes (with their forked work
    horses, via cutime/cstime, when they fork), the scheduler(s), the API, Redis, this client,
    from T0-1 s until the last reminder arrived. The jobs each run's workers started are counted
    from RQ's log lines (by function; reminder jobs re-enqueued by the sweep apart). Emails queued
    by the reminders go out in simulation mode (`.eml` files, SMTP_HOST unset) behind the
    reminders (queue `email` comes after `default`); their drain time is shown too.
(b) Email throughput. With no worker running, bookings on a resource that needs confirmation are
    created through the API (each queues 2 emails: booking.created to the customer and to the
    owner) until `--emails` deliveries wait in queue `email`. Then an aiosmtpd sink starts on a
    free loopback port and ONE `bookwire worker` with SMTP_HOST/PORT pointing at it
    (SMTP_STARTTLS=false). Emails/s = (accepted - 1) / (last accept - first accept); also from the
    worker's spawn (start-up included), its CPU per email, and a check that each Message-ID was
    accepted once and every delivery is `sent`.

Before starting, and between runs, it waits (at most `--idle-wait` s) until no other `bench/*.py`
runs and the machine is idle; the `other CPU s` column shows what else ran during a window anyway.

Diagnostics (no app file is changed): `--profile` samples the workers and their forked work horses
with py-spy during (a)'s window and during (b) (bench/results/pyspy-workers-*.txt) and prints where
their CPU went. `--worker-mode` picks the RQ worker class without touching an app file: `app` (the
default) runs `bookwire worker` as shipped (whatever workers.queues.build_worker builds; the report
names its class and the git commit, with any uncommitted change under app/ or workers/); the others
start the same command through a small `python -c` wrapper that replaces build_worker: `fork` =
rq.Worker (RQ's default: a forked work horse per job), `fork-preimport` = rq.Worker with
workers.jobs imported before it forks, `simple` = rq.SimpleWorker (jobs run in the worker process).

Exit status 0 when nothing was missed, doubled, failed or logged as a traceback and the targets
(p99 lateness < 2 s, max < 5 s) were met; 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import json
import math
import os
import platform
import random
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
from redis import Redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from procs import (  # noqa: E402
    CLK_TCK,
    die_with_parent,
    interrupt_on_sigterm,
    machine_busy_seconds,
    own_cpu_seconds,
    stat_fields,
    stop_process,
    tail,
)

from app.embedded_redis import EmbeddedRedis, free_port  # noqa: E402

# --worker-mode: `bookwire worker` with another RQ worker class, without changing any app file.
_WRAPPER = ("import sys{imports}, workers.queues as q\nfrom rq import {cls}\n"
            "q.build_worker = lambda c: {cls}(q.queues(c), connection=c)\n"
            "from app.cli import main\nsys.exit(main(['worker']))")
WORKER_MODES = {
    "app": None,  # `python -m app.cli worker`, as shipped
    # RQ's default: a work horse forked per job, which imports the job module afresh each time
    "fork": _WRAPPER.format(imports="", cls="Worker"),
    # the same, forking from a parent that has already imported the job module (and everything it imports)
    "fork-preimport": _WRAPPER.format(imports=", workers.jobs", cls="Worker"),
    # no fork: each job runs in the worker process itself
    "simple": _WRAPPER.format(imports="", cls="SimpleWorker"),
}
SERVER_START_TIMEOUT = 60.0
MIGRATE_TIMEOUT = 180.0
REQUEST_TIMEOUT = 60.0
WORKER_START_TIMEOUT = 60.0
TOKEN_TTL = 4 * 3600
CREATE_CONCURRENCY = 4
P99_TARGET = 2.0
MAX_TARGET = 5.0
RQ_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"
MESSAGE_ID = re.compile(rb"^Message-ID:\s*(<[^>\r\n]+>)", re.IGNORECASE | re.MULTILINE)


# --------------------------------------------------------------------------------------------------
# Processes, CPU accounting


def cpu_seconds(pid: int | None, children: bool = True) -> float | None:
    """utime + stime of a process (all threads), plus those of its reaped children (RQ's work horses)."""
    if pid is None:
        return None
    f = stat_fields(pid)
    if f is None:
        return None
    ticks = int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)
    return ticks / CLK_TCK


def system_cpu_seconds(pid: int | None) -> float | None:
    """The kernel-mode part (stime + cstime): fork, page faults, sockets, file I/O."""
    if pid is None:
        return None
    f = stat_fields(pid)
    return None if f is None else (int(f[12]) + int(f[14])) / CLK_TCK


def other_benchmarks() -> list[str]:
    """Command lines of other `bench/*.py` processes on this machine (they would skew the figures);
    this process and its ancestors (e.g. a `timeout` wrapping it) do not count."""
    found = []
    mine = {0, os.getpid()}
    pid = os.getppid()
    while pid > 1 and pid not in mine:
        mine.add(pid)
        fields = stat_fields(pid)
        if fields is None:
            break
        pid = int(fields[1])
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            args = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(re.search(rb"(^|/)bench/\w+\.py$", a) for a in args):
            found.append(b" ".join(args).decode(errors="replace")[:120])
    return found


def wait_for_idle(max_wait: float, threshold: float = 0.25, span: float = 5.0) -> float:
    """Wait (at most `max_wait` s) until no other benchmark runs and the machine was busy less than
    `threshold` cores over `span` seconds; the busy cores of the last sample."""
    deadline = time.monotonic() + max_wait
    while True:
        others = other_benchmarks()
        if others and time.monotonic() < deadline:
            print(f"   another benchmark is running ({others[0]}); waiting ...", flush=True)
            time.sleep(10)
            continue
        before = machine_busy_seconds()
        time.sleep(span)
        busy = (machine_busy_seconds() - before) / span
        if busy < threshold or time.monotonic() > deadline:
            return busy
        print(f"   machine busy {busy:.2f} cores; waiting for it to settle ...", flush=True)


def log_problems(paths: Iterable[Path]) -> tuple[int, int, str]:
    """Tracebacks and ERROR lines in the logs, and the first traceback."""
    tracebacks = errors = 0
    first = ""
    for path in paths:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for i, line in enumerate(lines):
            if line.startswith("Traceback"):
                tracebacks += 1
                if not first:
                    first = f"{path.name}:\n" + "\n".join(lines[max(0, i - 2):i + 30])
            if " ERROR " in line or line.startswith("ERROR"):
                errors += 1
    return tracebacks, errors, first


JOB_STARTED = re.compile(r"Worker \w+: (?:default|email): workers\.jobs\.(\w+)\(.*\) \((\S+)\)$")


def count_jobs(logs: Iterable[Path]) -> Counter[str]:
    """Jobs started, by function, from RQ's log line at the start of each job; `fire_due_reminders (sweep)`
    counts the reminder jobs that the sweep enqueued (job id ending in `-sweep`), `(more)` the ones a
    full batch enqueued to share the rest of a burst."""
    counts: Counter[str] = Counter()
    for path in logs:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            match = JOB_STARTED.search(line)
            if match:
                name = match.group(1)
                job_id = match.group(2)
                kind = " (sweep)" if job_id.endswith("-sweep") else " (more)" if "-more-" in job_id else ""
                counts[name + kind if name == "fire_due_reminders" else name] += 1
    return counts


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(round(q * len(ordered), 9)))
    return ordered[min(rank, len(ordered)) - 1]


def fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def parse_db_time(text: str | None) -> datetime | None:
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_rq_time(raw: bytes | None) -> float | None:
    if not raw:
        return None
    try:
        return datetime.strptime(raw.decode(), RQ_TIME).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------------
# The stack: Redis, SQLite, API, workers, schedulers


@dataclass
class Stack:
    workdir: Path
    offsets: str
    redis: EmbeddedRedis | None = None
    api: subprocess.Popen[bytes] | None = None
    port: int = 0
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    worker_mode: str = "app"
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    schedulers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    spawned_logs: list[Path] = field(default_factory=list)  # cleared by whoever wants "the logs since"
    spawned: int = 0

    @property
    def db_path(self) -> Path:
        return self.workdir / "bookwire.sqlite3"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **extra: str) -> dict[str, str]:
        drop = ("DATABASE_", "REDIS_", "JWT_", "ADMIN_", "SMTP_", "REMINDER_", "EMAIL_", "SSE_", "APP_URL",
                "STREAM_", "DATA_DIR")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        assert self.redis is not None
        env.update(DATABASE_URL=f"sqlite:///{self.db_path}", REDIS_URL=self.redis.url, DATA_DIR=str(self.workdir),
                   JWT_SECRET=self.secret, HOST="127.0.0.1", PORT=str(self.port), APP_URL="https://app.example.test",
                   REMINDER_PROVIDER_OFFSETS=self.offsets, REMINDER_CUSTOMER_OFFSETS=self.offsets, SMTP_HOST="")
        env.update(extra)
        return env

    def spawn(self, part: str, **extra: str) -> subprocess.Popen[bytes]:
        self.spawned += 1
        log = self.workdir / f"{self.spawned:02d}-{part}.log"
        self.logs.append(log)
        self.spawned_logs.append(log)
        argv = [sys.executable, "-m", "app.cli", part]
        wrapper = WORKER_MODES[self.worker_mode] if part == "worker" else None
        if wrapper:
            argv = [sys.executable, "-c", wrapper]
        with open(log, "ab") as out:
            return subprocess.Popen(argv, env=self.env(**extra), cwd=REPO,
                                    stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)

    def start(self) -> None:
        self.redis = EmbeddedRedis(self.workdir / "redis", persist=False)
        self.redis.start()
        self.port = free_port()
        migrate = self.spawn("migrate")
        try:
            code = migrate.wait(timeout=MIGRATE_TIMEOUT)
        finally:
            stop_process(migrate)
        if code != 0:
            raise RuntimeError(f"bookwire migrate exited with {code}:\n{tail(self.logs[-1])}")
        self.api = self.spawn("api")
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if self.api.poll() is not None:
                raise RuntimeError(f"bookwire api exited with {self.api.returncode}:\n{tail(self.logs[-1])}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"bookwire api did not answer /health:\n{tail(self.logs[-1])}")
            time.sleep(0.1)

    def sync_redis(self) -> Redis:
        assert self.redis is not None
        return Redis.from_url(self.redis.url)

    def start_workers(self, count: int, **extra: str) -> list[subprocess.Popen[bytes]]:
        from rq import Worker

        started = [self.spawn("worker", **extra) for _ in range(count)]
        self.workers.extend(started)
        conn = self.sync_redis()
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        try:
            while len(Worker.all(connection=conn)) < len(self.workers):
                if any(p.poll() is not None for p in started):
                    raise RuntimeError(f"a worker exited at start:\n{tail(self.logs[-1])}")
                if time.monotonic() > deadline:
                    raise RuntimeError("workers did not register with Redis in time")
                time.sleep(0.1)
        finally:
            conn.close()
        return started

    def start_schedulers(self, count: int) -> None:
        self.schedulers.extend(self.spawn("scheduler") for _ in range(count))
        time.sleep(1.0)
        for process in self.schedulers:
            if process.poll() is not None:
                raise RuntimeError(f"a scheduler exited at start:\n{tail(self.logs[-1])}")

    def stop_workers(self) -> None:
        for process in self.workers + self.schedulers:
            if process.poll() is None:
                process.terminate()
        for process in self.workers + self.schedulers:
            stop_process(process, timeout=20)
        self.workers, self.schedulers = [], []

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop_workers()
        stop_process(self.api)
        if self.redis is not None:
            self.redis.stop()

    def worker_cpu(self) -> float:
        return sum(cpu_seconds(p.pid) or 0.0 for p in self.workers)

    def scheduler_cpu(self) -> float:
        return sum(cpu_seconds(p.pid) or 0.0 for p in self.schedulers)

    def cpu_snapshot(self) -> dict[str, float | None]:
        """CPU seconds so far of every part, this client and the whole machine."""
        redis_pid = self.redis.process.pid if self.redis and self.redis.process else None
        return {"workers": self.worker_cpu(),
                "workers_sys": sum(system_cpu_seconds(p.pid) or 0.0 for p in self.workers),
                "schedulers": self.scheduler_cpu(),
                "api": cpu_seconds(self.api.pid if self.api else None), "redis": cpu_seconds(redis_pid),
                "client": own_cpu_seconds(), "machine": machine_busy_seconds()}


def insert_users(db_path: Path, role: str, count: int, tag: str) -> list[str]:
    """`count` active users straight into the `users` table (Piccolo's SQLite format)."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    created = datetime.now(UTC).isoformat(sep=" ")
    rows = [(uid, f"bench-{tag}-{role}-{i}-{uid[:8]}@example.test", f"Bench {role} {tag}-{i}", role,
             "bench-not-a-password-hash", 1, created) for i, uid in enumerate(ids)]
    with contextlib.closing(sqlite3.connect(db_path, timeout=30)) as db:
        db.executemany("INSERT INTO users (id, email, name, role, password_hash, active, created_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        db.commit()
    return ids


def mint(secret: str, user_id: str, role: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user_id, "role": role, "iat": now, "exp": now + TOKEN_TTL, "iss": "bookwire",
                       "aud": "bookwire"}, secret, algorithm="HS256")


def db_rows(db_path: Path, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    """Read-only query; a `{}` in `sql` becomes one `?` placeholder per parameter (for `IN ({})`)."""
    if "{}" in sql:
        sql = sql.replace("{}", ",".join("?" * len(params)))
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)) as db:
        db.row_factory = sqlite3.Row
        return db.execute(sql, tuple(params)).fetchall()


# --------------------------------------------------------------------------------------------------
# A raw-socket SSE client that timestamps every event as its bytes arrive


@dataclass
class Received:
    at: float          # time.time() when the bytes were read
    event: str
    id: str | None
    data: str


class SSEStream:
    def __init__(self, label: str) -> None:
        self.label = label
        self.events: list[Received] = []
        self.closed = False
        self.error: str | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader: asyncio.StreamReader | None = None
        self._raw = bytearray()
        self._remaining = 0
        self._need_crlf = False
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._text = ""
        self._pending: dict[str, Any] = {"event": "message", "id": None, "data": []}
        self.chunked = False

    async def open(self, port: int, token: str, timeout: float = 10.0) -> None:
        async def go() -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
            self._reader, self._writer = reader, writer
            writer.write((f"GET /v1/events/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                          f"Accept: text/event-stream\r\nAuthorization: Bearer {token}\r\n\r\n").encode())
            await writer.drain()
            status = int((await reader.readline()).split()[1])
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            if status != 200:
                raise RuntimeError(f"SSE stream {self.label}: HTTP {status}")
            self.chunked = headers.get("transfer-encoding") == "chunked"

        await asyncio.wait_for(go(), timeout)

    async def run(self) -> None:
        assert self._reader is not None
        try:
            while not self.closed:
                data = await self._reader.read(65536)
                now = time.time()
                if not data:
                    self.closed = True
                    break
                payload = self._dechunk(data) if self.chunked else data
                self._feed(self._decoder.decode(payload), now)
        except (OSError, asyncio.IncompleteReadError) as exc:
            self.error = repr(exc)
            self.closed = True

    def _dechunk(self, data: bytes) -> bytes:
        self._raw += data
        out = bytearray()
        while True:
            if self._remaining:
                take = bytes(self._raw[:self._remaining])
                out += take
                del self._raw[:len(take)]
                self._remaining -= len(take)
                if self._remaining:
                    break
                self._need_crlf = True
            if self._need_crlf:
                if len(self._raw) < 2:
                    break
                del self._raw[:2]
                self._need_crlf = False
            end = self._raw.find(b"\r\n")
            if end < 0:
                break
            size = int(bytes(self._raw[:end]).split(b";")[0] or b"0", 16)
            del self._raw[:end + 2]
            if size == 0:
                self.closed = True
                break
            self._remaining = size
        return bytes(out)

    def _feed(self, text: str, now: float) -> None:
        self._text += text
        while "\n" in self._text:
            line, self._text = self._text.split("\n", 1)
            line = line.rstrip("\r")
            pending = self._pending
            if not line:
                if pending["data"]:
                    self.events.append(Received(now, pending["event"], pending["id"], "\n".join(pending["data"])))
                self._pending = {"event": "message", "id": None, "data": []}
            elif line.startswith(":"):
                continue
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    pending["data"].append(value)
                elif name in ("event", "id"):
                    pending[name] = value

    def close(self) -> None:
        self.closed = True
        if self._writer is not None:
            self._writer.close()


# --------------------------------------------------------------------------------------------------
# API helpers


async def create_all(client: httpx.AsyncClient, bodies: list[tuple[str, dict[str, Any]]],
                     concurrency: int = CREATE_CONCURRENCY) -> tuple[list[dict[str, Any]], Counter[str], list[str]]:
    """POST every (token, body) to /v1/bookings with `concurrency` in flight; the created bookings."""
    created: list[dict[str, Any]] = []
    failures: Counter[str] = Counter()
    samples: list[str] = []
    queue = list(enumerate(bodies))

    async def one_worker() -> None:
        while queue:
            _, (token, body) = queue.pop(0)
            try:
                answer = await client.post("/v1/bookings", json=body, headers={"Authorization": f"Bearer {token}"})
            except httpx.HTTPError as exc:
                failures[type(exc).__name__] += 1
                continue
            if answer.status_code != 201:
                failures[f"HTTP {answer.status_code}"] += 1
                if len(samples) < 3:
                    samples.append(answer.text[:300])
                continue
            created.append(answer.json())

    await asyncio.gather(*(one_worker() for _ in range(concurrency)))
    return created, failures, samples


async def create_resources(client: httpx.AsyncClient, owners: list[tuple[str, str]],
                           requires_confirmation: bool) -> list[str]:
    async def one(owner_token: str, i: int) -> str:
        answer = await client.post("/v1/resources", headers={"Authorization": f"Bearer {owner_token}"}, json={
            "name": f"Bench room {i}", "kind": "room", "capacity": 10000, "timezone": "Europe/Paris",
            "requires_confirmation": requires_confirmation, "price_cents": 1500, "currency": "EUR"})
        if answer.status_code != 201:
            raise RuntimeError(f"create resource: {answer.status_code} {answer.text[:300]}")
        return str(answer.json()["id"])

    return list(await asyncio.gather(*(one(token, i) for i, (_, token) in enumerate(owners))))


def queue_lengths(conn: Redis) -> dict[str, int]:
    return {name: int(conn.llen(f"rq:queue:{name}")) for name in ("default", "email")}


def busy_jobs(conn: Redis) -> int:
    return sum(int(conn.zcard(f"rq:wip:{name}")) for name in ("default", "email"))


# --------------------------------------------------------------------------------------------------
# --profile: py-spy on the workers and their forked work horses


class Profiler:
    """`py-spy record --subprocesses` on each worker until stopped (SIGINT makes py-spy write its file)."""

    def __init__(self, pids: list[int], label: str) -> None:
        exe = Path(sys.executable).with_name("py-spy")
        results = REPO / "bench" / "results"
        results.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.paths = [results / f"pyspy-workers-{label}-{n}-{stamp}.txt" for n in range(len(pids))]
        self.processes = [
            subprocess.Popen([str(exe if exe.exists() else "py-spy"), "record", "--pid", str(pid), "--subprocesses",
                              "--nonblocking", "--gil", "--rate", str(PROFILE_RATE), "--format", "raw",
                              "--output", str(path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
            for pid, path in zip(pids, self.paths, strict=True)]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def summary(self, jobs: int, measured_cpu: float | None) -> str:
        return summarize_profile(self.paths, jobs, measured_cpu)


PROFILE_RATE = 250
# (label, a frame that marks the samples of that part): the first matching label wins, in this order
PROFILE_PARTS = [
    ("importing the job module (rq Job.func -> import_attribute)", "Job.func (rq/job.py"),
    ("job body in its event loop (asyncio run_until_complete)", "BaseEventLoop.run_until_complete"),
    ("threads (aiosqlite's connection threads, asyncio.to_thread)", "Thread._bootstrap"),
    ("waiting for and dequeuing jobs (worker loop)", "dequeue_job_and_maintain_ttl"),
    ("the rest of RQ (job status in Redis, logging, fork and reap, horse exit)", ""),
]
PROFILE_FRAMES = ("app/", "workers/", "piccolo/", "aiosqlite/", "jinja2/", "smtplib", "sqlite3", "redis/",
                  "email/", "importlib", "rq/")
PROFILE_SKIP = ("BaseWorker.", "Worker.", "SimpleWorker.", "Job.perform", "_run_module_as_main", "_run_code",
                "<module> (app/cli.py", "main (app/cli.py", "worker (app/cli.py", "_survive_redis_outages",
                "worker.<locals>", "<module> (<string>)")


def summarize_profile(paths: list[Path], jobs: int, measured_cpu: float | None) -> str:
    """Where the workers' CPU went, by part; the share spent in forked work horses; top frames."""
    horse = total = 0
    parts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for path in paths:
        try:
            lines = path.read_text().splitlines()
        except OSError:
            return f"(no profile: {path} missing; is py-spy installed and allowed to ptrace?)"
        for line in lines:
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = stack.split(";")
            if sum(1 for f in frames if f.startswith("process ")) >= 2:
                horse += count
            frames = [re.sub(r":\d+\)$", ")", f).replace(str(REPO) + "/", "")
                      .replace(sys.prefix + "/lib/python3.11/site-packages/", "")
                      for f in frames if not f.startswith(("process ", "thread "))]
            total += count
            for label, marker in PROFILE_PARTS:
                if not marker or any(marker in f for f in frames):
                    parts[label] += count
                    break
            for frame in set(frames):
                if any(key in frame for key in PROFILE_FRAMES) and not frame.startswith(PROFILE_SKIP):
                    inclusive[frame] += count
    if not total:
        return "(no samples)"
    out = [f"{total} samples at {PROFILE_RATE} Hz of a thread holding the GIL = {total / PROFILE_RATE:.1f} s, of the "
           f"{fmt(measured_cpu)} s of CPU the workers used ({jobs} jobs); native code without the GIL (the kernel: "
           "fork, page faults, sockets; SQLite itself) is not sampled"
           + ("; py-spy attaches to each short-lived work horse late, so read the shares, not the times"
              if horse else ""),
           f"  {100 * horse / total:5.1f} %  of the samples in forked work horses"]
    out += [f"  {100 * parts[label] / total:5.1f} %  {label}" for label, _ in PROFILE_PARTS]
    out.append("  top frames (inclusive % of all samples):")
    out += [f"  {100 * c / total:5.1f} %    {f}" for f, c in inclusive.most_common(22)]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# (a) reminder lateness


@dataclass
class ReminderRun:
    workers: int
    schedulers: int
    reminders: int = 0                 # rows in the `reminders` table for this run's bookings
    bookings: int = 0
    recipients: int = 0
    setup_margin: float = 0.0          # seconds between the end of setup and the first due time
    lateness: list[float] = field(default_factory=list)
    missed: int = 0
    doubled: int = 0
    extra_events: int = 0              # reminder.due events beyond the first per reminder
    unknown: int = 0                   # reminder.due events for reminders not of this run
    status: Counter[str] = field(default_factory=Counter)
    stages: dict[str, list[float]] = field(default_factory=dict)
    failed_jobs: int = 0
    stream_errors: list[str] = field(default_factory=list)
    window: float = 0.0
    cpu: dict[str, float | None] = field(default_factory=dict)
    jobs_in_window: dict[str, int] = field(default_factory=dict)
    queue_at_t0: dict[str, int] = field(default_factory=dict)
    drain_seconds: float | None = None
    drain_emails: int = 0
    drain_rate: float | None = None
    first_due: float = 0.0
    last_due: float = 0.0
    profile: str | None = None
    last_arrival: float = 0.0
    job_counts: Counter[str] = field(default_factory=Counter)  # jobs the run's workers started, from their logs
    run_worker_cpu: float | None = None   # the run's workers, from their start to the end of the email drain
    run_worker_sys: float | None = None

    @property
    def fired_per_second(self) -> float | None:
        """Reminders fired per second from the first due time to the last arrival."""
        span = self.last_arrival - self.first_due
        return len(self.lateness) / span if self.lateness and span > 0 else None

    def pct(self, q: float) -> float | None:
        return percentile(self.lateness, q)

    @property
    def passed(self) -> bool:
        p99, worst = self.pct(0.99), max(self.lateness, default=None)
        return (not self.missed and not self.doubled and not self.unknown and self.reminders > 0
                and p99 is not None and p99 < P99_TARGET and worst is not None and worst < MAX_TARGET)

    def as_dict(self) -> dict[str, Any]:
        return {
            "workers": self.workers, "schedulers": self.schedulers, "reminders": self.reminders,
            "bookings": self.bookings, "recipients": self.recipients, "fired_per_second": self.fired_per_second,
            "setup_margin_s": round(self.setup_margin, 2),
            "lateness_p50_s": self.pct(0.5), "lateness_p99_s": self.pct(0.99),
            "lateness_max_s": max(self.lateness, default=None), "missed": self.missed, "doubled": self.doubled,
            "unknown": self.unknown, "status": dict(self.status),
            "failed_jobs": self.failed_jobs, "window_s": self.window, "cpu_s": self.cpu,
            "jobs_in_window": self.jobs_in_window, "queue_at_t0": self.queue_at_t0,
            "stages_p50_p99_max_s": {k: [percentile(v, 0.5), percentile(v, 0.99), max(v, default=None)]
                                     for k, v in self.stages.items()},
            "job_counts": dict(self.job_counts), "run_worker_cpu_s": self.run_worker_cpu,
            "run_worker_kernel_cpu_s": self.run_worker_sys, "email_drain_s": self.drain_seconds,
            "email_drain_messages": self.drain_emails,
            "stream_errors": self.stream_errors,
        }


async def reminders_run(stack: Stack, workers: int, schedulers: int, args: argparse.Namespace,
                        run_no: int) -> ReminderRun:
    run = ReminderRun(workers, schedulers)
    offsets = args.offset_seconds
    per_booking = 2 * len(offsets)
    bookings_n = math.ceil(args.reminders / per_booking)
    providers_n = max(1, args.recipients // 2)
    customers_n = max(1, args.recipients - providers_n)
    run.recipients = providers_n + customers_n
    setup_started = time.time()
    t0 = math.ceil(setup_started) + args.lead
    conn = stack.sync_redis()
    streams: list[SSEStream] = []
    readers: list[asyncio.Task[None]] = []
    try:
        stack.spawned_logs = []
        stack.start_workers(workers)
        worker_logs = list(stack.spawned_logs)
        worker_cpu_start = stack.worker_cpu()
        worker_sys_start = sum(system_cpu_seconds(p.pid) or 0.0 for p in stack.workers)
        stack.start_schedulers(schedulers)
        tag = f"r{run_no}"
        provider_ids = insert_users(stack.db_path, "provider", providers_n, tag)
        customer_ids = insert_users(stack.db_path, "customer", customers_n, tag)
        providers = [(uid, mint(stack.secret, uid, "provider")) for uid in provider_ids]
        customers = [(uid, mint(stack.secret, uid, "customer")) for uid in customer_ids]
        for uid, token in providers + customers:
            stream = SSEStream(uid)
            await stream.open(stack.port, token)
            streams.append(stream)
            readers.append(asyncio.create_task(stream.run()))
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=REQUEST_TIMEOUT) as client:
            resources = await create_resources(client, providers, requires_confirmation=False)
            rng = random.Random(run_no)
            bodies = []
            for i in range(bookings_n):
                start = datetime.fromtimestamp(t0 + 5 + 5 * (i % 2), UTC)
                if args.jitter:
                    start += timedelta(milliseconds=rng.randrange(1000))
                _, token = customers[i % customers_n]
                bodies.append((token, {"resource_id": resources[i % providers_n], "starts_at": start.isoformat(),
                                       "ends_at": (start + timedelta(minutes=30)).isoformat(),
                                       "notes": f"bench reminder booking {i}"}))
            created, failures, samples = await create_all(client, bodies)
        if failures or any(b["status"] != "confirmed" for b in created):
            raise RuntimeError(f"booking setup failed: {dict(failures)} {samples} "
                               f"statuses {Counter(b['status'] for b in created)}")
        run.bookings = len(created)
        run.setup_margin = t0 - time.time()
        booking_ids = [str(b["id"]) for b in created]
        rows = db_rows(stack.db_path, "SELECT id, due_at, status FROM reminders WHERE booking_id IN ({})", booking_ids)
        due = {str(r["id"]): parse_db_time(r["due_at"]).timestamp() for r in rows}  # type: ignore[union-attr]
        run.reminders = len(due)
        run.first_due, run.last_due = min(due.values(), default=t0), max(due.values(), default=t0)
        print(f"   run {run_no}: {workers} worker(s), {schedulers} scheduler(s): {run.bookings} bookings, "
              f"{run.reminders} reminders due in [{run.first_due - t0:+.2f} s, {run.last_due - t0:+.2f} s] of T0; "
              f"setup left {run.setup_margin:.1f} s before T0", flush=True)
        if run.setup_margin < 1.0:
            print("   !! setup ended less than 1 s before the first due time: raise --lead", flush=True)

        # The window: from T0 - 1 s until every reminder arrived (or the time limit).
        await asyncio.sleep(max(0.0, t0 - 1.0 - time.time()))
        profiler = Profiler([p.pid for p in stack.workers], f"a{run_no}") if args.profile else None
        run.queue_at_t0 = queue_lengths(conn)
        cpu0 = stack.cpu_snapshot()
        w0 = time.time()
        limit = run.last_due + args.max_late
        seen: set[str] = set()
        cursors = [0] * len(streams)
        while time.time() < limit:
            for n, stream in enumerate(streams):
                for ev in stream.events[cursors[n]:]:
                    if ev.event == "reminder.due":
                        seen.add(str(json.loads(ev.data)["data"]["reminder"]["id"]))
                cursors[n] = len(stream.events)
            if len(seen & due.keys()) >= run.reminders:
                break
            await asyncio.sleep(0.05)
        w1 = time.time()
        cpu1 = stack.cpu_snapshot()
        if profiler is not None:
            profiler.stop()
        run.window = w1 - w0
        run.cpu = {k: (None if (a := cpu0[k]) is None or (b := cpu1[k]) is None else b - a) for k in cpu0}
        await asyncio.sleep(args.quiet)  # late duplicates would show up here

        # Count what arrived.
        arrivals: dict[str, list[Received]] = {}
        for stream in streams:
            if stream.error:
                run.stream_errors.append(f"{stream.label}: {stream.error}")
            elif stream.closed:
                run.stream_errors.append(f"{stream.label}: closed by the server")
            for ev in stream.events:
                if ev.event != "reminder.due":
                    continue
                reminder_id = str(json.loads(ev.data)["data"]["reminder"]["id"])
                arrivals.setdefault(reminder_id, []).append(ev)
        run.unknown = sum(len(v) for k, v in arrivals.items() if k not in due)
        run.missed = sum(1 for k in due if k not in arrivals)
        run.doubled = sum(1 for k in due if len(arrivals.get(k, ())) > 1)
        run.extra_events = sum(len(arrivals[k]) - 1 for k in due if len(arrivals.get(k, ())) > 1)
        final = db_rows(stack.db_path, "SELECT id, status, fired_at FROM reminders WHERE booking_id IN ({})",
                        booking_ids)
        run.status = Counter(r["status"] for r in final)

        # Where the time goes, from RQ's job hashes (result_ttl 3600 s keeps them).
        ids = list(due)
        pipe = conn.pipeline(transaction=False)
        for rid in ids:
            # the job of the whole second the reminder was scheduled for (a `-more-` job may have fired it)
            pipe.hmget(f"rq:job:bookwire-reminders-{math.ceil(due[rid])}", "enqueued_at", "started_at", "ended_at")
        answers = pipe.execute()
        stages: dict[str, list[float]] = {k: [] for k in ("rounding", "scheduler", "queue", "publish", "delivery",
                                                          "job length")}
        for rid, (enq, sta, end) in zip(ids, answers[:len(ids)], strict=True):
            first = min(arrivals.get(rid, []), key=lambda e: e.at, default=None)
            if first is None:
                continue
            run.lateness.append(first.at - due[rid])
            run.last_arrival = max(run.last_arrival, first.at)
            slot = math.ceil(due[rid])
            enqueued, started, ended = parse_rq_time(enq), parse_rq_time(sta), parse_rq_time(end)
            published = int(first.id.split("-")[0]) / 1000 if first.id and first.id[0].isdigit() else None
            stages["rounding"].append(slot - due[rid])
            if enqueued is not None:
                stages["scheduler"].append(enqueued - slot)
                if started is not None:
                    stages["queue"].append(started - enqueued)
            if started is not None and published is not None:
                stages["publish"].append(published - started)
            if published is not None:
                stages["delivery"].append(first.at - published)
            if started is not None and ended is not None:
                stages["job length"].append(ended - started)
        run.stages = stages
        run.failed_jobs = int(conn.zcard("rq:failed:default")) + int(conn.zcard("rq:failed:email"))
        def in_window(text: str | None) -> bool:
            moment = parse_db_time(text)
            return moment is not None and w0 <= moment.timestamp() <= w1

        sent = db_rows(stack.db_path, "SELECT sent_at FROM email_deliveries WHERE sent_at IS NOT NULL")
        run.jobs_in_window = {"reminders": sum(1 for r in final if in_window(r["fired_at"])),
                              "emails": sum(1 for r in sent if in_window(r["sent_at"]))}
        if profiler is not None:
            run.profile = profiler.summary(sum(run.jobs_in_window.values()), run.cpu.get("workers"))

        # Let the reminder emails (simulation mode) drain, so the next run starts clean.
        drain0 = time.time()
        queued0 = int(db_rows(stack.db_path, "SELECT count(*) FROM email_deliveries WHERE status != 'sent'")[0][0])
        deadline = drain0 + args.drain_timeout
        while time.time() < deadline:
            lengths = queue_lengths(conn)
            if not lengths["default"] and not lengths["email"] and not busy_jobs(conn):
                break
            await asyncio.sleep(0.2)
        else:
            print(f"   !! email queue not drained after {args.drain_timeout:.0f} s: emptying it", flush=True)
            conn.delete("rq:queue:email")
        run.drain_seconds = time.time() - drain0
        run.drain_emails = queued0
        run.drain_rate = queued0 / run.drain_seconds if run.drain_seconds > 0 and queued0 else None
        run.run_worker_cpu = stack.worker_cpu() - worker_cpu_start
        run.run_worker_sys = sum(system_cpu_seconds(p.pid) or 0.0 for p in stack.workers) - worker_sys_start
        stack.stop_workers()
        run.job_counts = count_jobs(worker_logs)
        return run
    finally:
        for stream in streams:
            stream.close()
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        stack.stop_workers()
        conn.close()


# --------------------------------------------------------------------------------------------------
# (b) email throughput of one worker


class SinkHandler:
    """aiosmtpd handler: records when each message was accepted (250 to the end of DATA)."""

    def __init__(self, on_first: Any) -> None:
        self.accepted: list[tuple[float, str]] = []
        self.on_first = on_first
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = bytes(envelope.original_content or envelope.content or b"")
        header_end = raw.find(b"\r\n\r\n")
        match = MESSAGE_ID.search(raw[:header_end if header_end > 0 else len(raw)])
        message_id = match.group(1).decode() if match else ""
        with self.lock:
            if not self.accepted:
                self.on_first()
            self.accepted.append((time.time(), message_id))
        return "250 OK"


@dataclass
class EmailRun:
    messages: int = 0
    accepted: int = 0
    duplicates: int = 0
    not_sent: int = 0
    first_to_last: float | None = None
    spawn_to_last: float | None = None
    spawn_to_first: float | None = None
    worker_cpu: float | None = None         # between the first and the last accepted message
    worker_sys: float | None = None         # its kernel-mode part
    worker_cpu_total: float | None = None   # from spawn to the last accepted message (start-up included)
    sink_client_cpu: float | None = None
    machine_cpu: float | None = None
    statuses: Counter[str] = field(default_factory=Counter)
    profile: str | None = None

    @property
    def rate(self) -> float | None:
        if not self.first_to_last or self.accepted < 2:
            return None
        return (self.accepted - 1) / self.first_to_last

    @property
    def passed(self) -> bool:
        return self.accepted == self.messages and not self.duplicates and not self.not_sent

    def as_dict(self) -> dict[str, Any]:
        return {"messages": self.messages, "accepted": self.accepted, "duplicates": self.duplicates,
                "not_sent": self.not_sent, "first_to_last_s": self.first_to_last, "emails_per_second": self.rate,
                "spawn_to_first_s": self.spawn_to_first, "spawn_to_last_s": self.spawn_to_last,
                "worker_cpu_s": self.worker_cpu, "worker_kernel_cpu_s": self.worker_sys,
                "worker_cpu_total_s": self.worker_cpu_total,
                "bench_cpu_s": self.sink_client_cpu, "machine_cpu_s": self.machine_cpu,
                "statuses": dict(self.statuses)}


async def email_run(stack: Stack, args: argparse.Namespace) -> EmailRun:
    from aiosmtpd.controller import Controller

    result = EmailRun()
    conn = stack.sync_redis()
    controller = None
    try:
        if queue_lengths(conn)["email"]:
            raise RuntimeError("queue `email` is not empty before the email phase")
        bookings_n = math.ceil(args.emails / 2)
        provider_id = insert_users(stack.db_path, "provider", 1, "mail")[0]
        customer_ids = insert_users(stack.db_path, "customer", 10, "mail")
        provider = (provider_id, mint(stack.secret, provider_id, "provider"))
        tokens = [mint(stack.secret, uid, "customer") for uid in customer_ids]
        base = (datetime.now(UTC) + timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=REQUEST_TIMEOUT) as client:
            (resource,) = await create_resources(client, [provider], requires_confirmation=True)
            bodies = [(tokens[i % len(tokens)], {
                "resource_id": resource, "starts_at": (base + timedelta(minutes=i)).isoformat(),
                "ends_at": (base + timedelta(minutes=i + 30)).isoformat(), "notes": f"bench email booking {i}"})
                for i in range(bookings_n)]
            created, failures, samples = await create_all(client, bodies)
        if failures:
            raise RuntimeError(f"booking setup failed: {dict(failures)} {samples}")
        booking_ids = [str(b["id"]) for b in created]
        # Every delivery recorded, and every outbox row carried out (their jobs are in queue `email`:
        # one job per change since the deliveries of one change share it).
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (  # noqa: ASYNC110
                db_rows(stack.db_path, "SELECT count(*) FROM email_deliveries WHERE status = 'queued'")[0][0]
                < 2 * len(created) or db_rows(stack.db_path, "SELECT count(*) FROM outbox")[0][0]):
            await asyncio.sleep(0.1)
        result.messages = db_rows(stack.db_path, "SELECT count(*) FROM email_deliveries WHERE status = 'queued'")[0][0]
        print(f"   {len(created)} bookings queued {result.messages} emails in {queue_lengths(conn)['email']} jobs;"
              " starting the sink and one worker", flush=True)

        worker_box: dict[str, Any] = {}

        def on_first() -> None:  # runs in the sink's thread, possibly before start_workers returns
            worker_box["cpu_first"] = cpu_seconds(stack.workers[0].pid if stack.workers else None)
            worker_box["sys_first"] = system_cpu_seconds(stack.workers[0].pid if stack.workers else None)
            worker_box["client_first"] = own_cpu_seconds()
            worker_box["machine_first"] = machine_busy_seconds()

        handler = SinkHandler(on_first)
        sink_port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=sink_port)
        controller.start()
        spawned = time.time()
        (worker,) = stack.start_workers(1, SMTP_HOST="127.0.0.1", SMTP_PORT=str(sink_port), SMTP_STARTTLS="false")
        profiler = Profiler([worker.pid], "b") if args.profile else None
        deadline = time.monotonic() + args.email_timeout
        idle_since = None
        while len(handler.accepted) < result.messages and time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError(f"the worker exited:\n{tail(stack.logs[-1])}")
            # No scheduler runs in (b): a failed attempt's retry would never come. Stop when nothing is left.
            if queue_lengths(conn)["email"] or busy_jobs(conn):
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > 3:
                print("   !! queue `email` is empty but not every message arrived", flush=True)
                break
            await asyncio.sleep(0.05)
        cpu_last, client_last, machine_last = cpu_seconds(worker.pid), own_cpu_seconds(), machine_busy_seconds()
        sys_last = system_cpu_seconds(worker.pid)
        if profiler is not None:
            profiler.stop()
            result.profile = profiler.summary(len(handler.accepted), cpu_last)
        await asyncio.sleep(args.quiet)
        with handler.lock:
            accepted = list(handler.accepted)
        result.accepted = len(accepted)
        counts = Counter(mid for _, mid in accepted)
        result.duplicates = sum(c - 1 for c in counts.values() if c > 1)
        if accepted:
            first, last = accepted[0][0], accepted[min(result.messages, len(accepted)) - 1][0]
            result.first_to_last = last - first
            result.spawn_to_first = first - spawned
            result.spawn_to_last = last - spawned
        if "cpu_first" in worker_box and cpu_last is not None:
            result.worker_cpu = cpu_last - worker_box["cpu_first"]
            if sys_last is not None and worker_box.get("sys_first") is not None:
                result.worker_sys = sys_last - worker_box["sys_first"]
            result.worker_cpu_total = cpu_last
            result.sink_client_cpu = client_last - worker_box["client_first"]
            result.machine_cpu = machine_last - worker_box["machine_first"]
        rows = db_rows(stack.db_path, "SELECT status, count(*) AS n FROM email_deliveries WHERE booking_id IN ({}) "
                                      "GROUP BY status", booking_ids)
        result.statuses = Counter({r["status"]: r["n"] for r in rows})
        result.not_sent = sum(n for s, n in result.statuses.items() if s != "sent")
        return result
    finally:
        stack.stop_workers()
        if controller is not None:
            controller.stop()
        conn.close()


# --------------------------------------------------------------------------------------------------
# Reporting


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True)))]
    lines.append("-" * len(lines[0]))
    for r in rows:
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(lines)


def report(runs: list[ReminderRun], mail: EmailRun | None, args: argparse.Namespace) -> str:
    out: list[str] = []
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    if args.profile:
        out.append("PROFILED RUN (--profile): py-spy sampled the workers, so latency and throughput are pessimistic")
    out.append(f"code: {args.code_state}; `bookwire worker` builds an rq {args.app_worker_class}")
    wrapper = WORKER_MODES[args.worker_mode]
    if wrapper:
        out.append(f"--worker-mode {args.worker_mode}: each worker ran as `python -c` with\n"
                   + "\n".join(f"    {line}" for line in wrapper.splitlines()))
    out.append(f"machine: {os.cpu_count()} cores ({platform.machine()}, Linux {platform.release()}), Python "
               f"{platform.python_version()}; every process shares these cores; load average now {load}")
    if runs:
        r0 = runs[0]
        out.append("")
        out.append(f"== (a) reminder lateness: {r0.reminders} reminders ({r0.bookings} bookings x "
                   f"{2 * len(args.offset_seconds)} offsets {args.offsets}), due times "
                   f"{'with random sub-second parts' if args.jitter else 'on whole seconds'} spread over "
                   f"{r0.last_due - r0.first_due:.1f} s; {r0.recipients} recipients, one SSE stream each ==")
        rows = []
        for r in runs:
            worst = max(r.lateness, default=None)
            within = (sum(1 for x in r.lateness if x <= P99_TARGET) / r.reminders * 100) if r.reminders else None
            rows.append([f"{r.workers} worker(s), {r.schedulers} sched.", str(r.reminders), str(len(r.lateness)),
                         str(r.missed), str(r.doubled), fmt(r.fired_per_second, 1), fmt(r.pct(0.5)), fmt(r.pct(0.99)),
                         fmt(worst),
                         fmt(within, 1), str(r.job_counts.get("fire_due_reminders (sweep)", 0)), str(r.failed_jobs),
                         ",".join(f"{k}={v}" for k, v in sorted(r.status.items())),
                         "PASS" if r.passed else "FAIL"])
        out.append(table(["run", "reminders", "fired", "missed", "doubled", "fired/s", "p50 s", "p99 s", "max s",
                          "<=2s %", "sweep jobs", "failed jobs", "table status", "target"], rows))
        out.append("lateness = arrival of `reminder.due` on the recipient's SSE stream - the reminder's due_at; "
                   "fired/s = reminders that arrived / (last arrival - first due time); "
                   f"target p99 < {P99_TARGET:g} s, max < {MAX_TARGET:g} s, none missed or doubled")
        out.append("")
        out.append("-- where the time goes (seconds, p50 / p99 / max over all reminders) --")
        stage_names = ["rounding", "scheduler", "queue", "publish", "delivery", "job length"]
        rows = []
        for r in runs:
            rows.append([f"{r.workers} w"] + [
                f"{fmt(percentile(r.stages.get(s, []), 0.5))} / {fmt(percentile(r.stages.get(s, []), 0.99))} / "
                f"{fmt(max(r.stages.get(s, []), default=None))}" for s in stage_names])
        out.append(table(["run", *stage_names], rows))
        out.append("rounding: due_at -> the whole second JobQueue schedules it for; scheduler: -> RQ enqueued_at "
                   "(rq-scheduler polls every 0.5 s); queue: -> started_at (waiting for a free worker); "
                   "publish: -> XADD of reminder.due (the event id's clock: DB queries before it); delivery: -> "
                   "bytes read on the SSE socket (API hub); job length: started_at -> ended_at")
        out.append("")
        out.append("-- CPU during the window (T0 - 1 s until the last reminder arrived) --")
        rows = []
        for r in runs:
            c = r.cpu
            jobs = r.jobs_in_window.get("reminders", 0) + r.jobs_in_window.get("emails", 0)
            per_job = None if not jobs or c.get("workers") is None else c["workers"] * 1000 / jobs  # type: ignore[operator]
            other = None
            if all(c.get(k) is not None for k in ("machine", "workers", "schedulers", "api", "redis", "client")):
                other = c["machine"] - sum(c[k] for k in ("workers", "schedulers", "api", "redis", "client"))  # type: ignore[operator,misc]
            cores = os.cpu_count() or 1
            busy = None if c.get("machine") is None or not r.window else c["machine"] / r.window / cores * 100  # type: ignore[operator]
            queued = r.queue_at_t0
            rows.append([f"{r.workers} w", fmt(r.window, 1), fmt(busy, 0),
                         f"{fmt(c.get('workers'))} ({fmt(c.get('workers_sys'))})",
                         str(r.jobs_in_window.get("reminders", 0)), str(r.jobs_in_window.get("emails", 0)),
                         fmt(per_job, 1), fmt(c.get("schedulers")), fmt(c.get("api")), fmt(c.get("redis")),
                         fmt(c.get("client")), fmt(other), f"{queued.get('default', 0)}/{queued.get('email', 0)}",
                         f"{fmt(r.drain_seconds, 1)} s / {r.drain_emails}"])
        out.append(table(["run", "window s", "machine busy %", "workers CPU s (kernel)", "reminder jobs", "email jobs",
                          "worker CPU ms/job", "sched. CPU s", "API CPU s", "Redis CPU s", "client CPU s",
                          "other CPU s", "queued at T0 (default/email)", "email drain after"], rows))
        out.append("")
        out.append("-- jobs the workers ran over the whole run (setup emails, reminders, their emails, periodic jobs), "
                   "from RQ's log lines --")
        rows = []
        for r in runs:
            jobs_run = r.job_counts
            total = sum(jobs_run.values())
            per_job = None if not total or r.run_worker_cpu is None else r.run_worker_cpu * 1000 / total
            rows.append([f"{r.workers} w", *(str(jobs_run.get(k, 0)) for k in (
                "fire_due_reminders", "fire_due_reminders (more)", "fire_due_reminders (sweep)", "send_email", "sweep",
                "cleanup")), str(total),
                         f"{fmt(r.run_worker_cpu)} ({fmt(r.run_worker_sys)})", fmt(per_job, 1)])
        out.append(table(["run", "fire_due_reminders", "(more)", "(sweep)", "send_email (simulation)",
                          "sweep", "cleanup", "jobs", "workers CPU s (kernel)", "CPU ms/job"], rows))
        out.append("")
        out.append("worker CPU includes the forked work horses (cutime/cstime of each `bookwire worker`); email "
                   "jobs in the window ran in simulation mode (.eml files); `email drain after` = time until "
                   "both queues were empty after the window / deliveries not yet sent when it started")
        for r in runs:
            if r.profile:
                out.append(f"\n-- py-spy of the {r.workers} worker(s) during the window of (a) --\n{r.profile}")
        for r in runs:
            c = r.cpu
            if c.get("machine") is not None and r.window and c["machine"] - sum(  # type: ignore[operator]
                    c.get(k) or 0.0 for k in ("workers", "schedulers", "api", "redis", "client")) > 0.1 * r.window:
                out.append(f"!! {r.workers} w: 'other CPU s' is more than 10 % of a core: something else ran on the "
                           "machine during the window; the figures of this run are pessimistic")
            if r.stream_errors:
                out.append(f"!! {r.workers} w: SSE stream problems: {r.stream_errors[:5]}")
            if r.unknown:
                out.append(f"!! {r.workers} w: {r.unknown} reminder.due events for reminders not of this run")
    if mail is not None:
        out.append("")
        out.append(f"== (b) email throughput: one `bookwire worker`, {mail.messages} queued deliveries, aiosmtpd sink "
                   f"on 127.0.0.1 (STARTTLS off) ==")
        per_email = (None if mail.worker_cpu is None or mail.accepted < 2
                     else mail.worker_cpu * 1000 / (mail.accepted - 1))
        out.append(table(
            ["messages", "accepted", "duplicates", "not sent", "first->last s", "emails/s", "spawn->first s",
             "spawn->last s", "worker CPU s (kernel)", "worker CPU ms/email", "bench+sink CPU s", "machine busy %"],
            [[str(mail.messages), str(mail.accepted), str(mail.duplicates), str(mail.not_sent),
              fmt(mail.first_to_last), fmt(mail.rate, 1), fmt(mail.spawn_to_first), fmt(mail.spawn_to_last),
              f"{fmt(mail.worker_cpu)} ({fmt(mail.worker_sys)})", fmt(per_email, 1), fmt(mail.sink_client_cpu),
              fmt(None if mail.machine_cpu is None or not mail.first_to_last else
                  mail.machine_cpu / mail.first_to_last / (os.cpu_count() or 1) * 100, 0)]]))
        out.append(f"delivery statuses: {dict(mail.statuses)}; CPU columns between the first and the last accepted "
                   "message (the worker's includes its forked work horses)")
        if mail.profile:
            out.append("\n-- py-spy of the worker during (b) --\n" + mail.profile)
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reminders", type=int, default=1000, help="reminders due in the 10 s window (1000)")
    parser.add_argument("--workers", default="2", help="RQ workers for (a); a list such as 1,2,4 runs (a) once each")
    parser.add_argument("--schedulers", type=int, default=1, help="rq-scheduler processes for (a) (1)")
    parser.add_argument("--recipients", type=int, default=50, help="users reminded, half providers (50)")
    parser.add_argument("--offsets", default="1s,2s,3s,4s,5s",
                        help="REMINDER_PROVIDER_OFFSETS = REMINDER_CUSTOMER_OFFSETS (1s,2s,3s,4s,5s); "
                             "between 1 and 5 s each so the due times stay in the 10 s window")
    parser.add_argument("--lead", type=int, default=40, help="seconds from the start of a run's setup to T0 (40)")
    parser.add_argument("--jitter", action="store_true", help="bookings start at random sub-second times")
    parser.add_argument("--max-late", type=float, default=300.0,
                        help="stop waiting for reminders this long after the last due time (300)")
    parser.add_argument("--quiet", type=float, default=5.0, help="seconds to keep listening for duplicates (5)")
    parser.add_argument("--drain-timeout", type=float, default=300.0,
                        help="longest wait for the reminder emails to drain after a run (300)")
    parser.add_argument("--emails", type=int, default=500, help="deliveries for (b) (500; 0 skips (b))")
    parser.add_argument("--email-timeout", type=float, default=300.0, help="longest (b) may take (300)")
    parser.add_argument("--skip-reminders", action="store_true", help="only run (b)")
    parser.add_argument("--worker-mode", choices=list(WORKER_MODES), default="app",
                        help="app (default): `bookwire worker` as shipped; fork = rq.Worker (a fork per job); "
                             "fork-preimport = rq.Worker with workers.jobs imported before forking; "
                             "simple = rq.SimpleWorker (no fork)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the workers (and their forked horses) during (a)'s window and during (b); the "
                             "profiler takes CPU too, so the other figures of such a run are pessimistic")
    parser.add_argument("--idle-wait", type=float, default=120.0,
                        help="wait at most this long for an idle machine before starting (120)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--keep-logs", action="store_true", help="copy the process logs to bench/results/")
    args = parser.parse_args(argv)
    try:
        args.worker_counts = [int(x) for x in args.workers.split(",") if x.strip()]
    except ValueError:
        parser.error("--workers takes a number or a comma-separated list of numbers")
    if not args.worker_counts or min(args.worker_counts) < 1 or args.schedulers < 1:
        parser.error("--workers and --schedulers must be at least 1")
    from app.settings import SettingsError, parse_durations

    try:
        args.offset_seconds = parse_durations(args.offsets, "--offsets")
    except SettingsError as exc:
        parser.error(str(exc))
    if not args.offset_seconds or not all(1 <= o <= 5 for o in args.offset_seconds):
        parser.error("--offsets: each offset between 1s and 5s")
    if args.reminders < 1 or args.recipients < 2 or args.lead < 15:
        parser.error("--reminders >= 1, --recipients >= 2, --lead >= 15")
    return args


def code_state() -> str:
    """The git commit, and the uncommitted changes under app/ and workers/ (the code being measured)."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10,
                                  check=False).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    changed = [line[3:] for line in git("status", "--porcelain", "--", "app", "workers").splitlines() if line]
    return f"commit {head}" + (f" + uncommitted changes in {', '.join(changed)}" if changed
                               else " (no uncommitted change in app/, workers/)")


def app_worker_class(redis_url: str) -> str:
    """The class of the worker that `bookwire worker` builds (workers.queues.build_worker)."""
    from workers.queues import build_worker

    conn = Redis.from_url(redis_url)
    try:
        return type(build_worker(conn)).__name__
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_sigterm()
    started = time.monotonic()
    print(f"bench/workers.py: reminders {args.reminders}, workers {args.worker_counts}, schedulers "
          f"{args.schedulers}, emails {args.emails}; {os.cpu_count()} cores", flush=True)
    busy = wait_for_idle(args.idle_wait)
    print(f"before starting, the machine was busy {busy:.2f} of {os.cpu_count()} cores", flush=True)
    if busy > 0.3:
        print("!! other processes are using the CPU: the figures will be pessimistic", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="bookwire-bench-workers-"))
    stack = Stack(workdir, args.offsets, worker_mode=args.worker_mode)
    runs: list[ReminderRun] = []
    mail: EmailRun | None = None
    try:
        stack.start()
        assert stack.api is not None and stack.redis is not None
        args.code_state, args.app_worker_class = code_state(), app_worker_class(stack.redis.url)
        print(f"code: {args.code_state}; `bookwire worker` builds an rq {args.app_worker_class}; "
              f"--worker-mode {args.worker_mode}", flush=True)
        print(f"api pid {stack.api.pid} at {stack.base_url}; redis {stack.redis.url}; data in {workdir}", flush=True)
        if not args.skip_reminders:
            for i, count in enumerate(args.worker_counts, 1):
                if i > 1:
                    wait_for_idle(args.idle_wait)
                print(f"(a) run {i}: {count} worker(s) ...", flush=True)
                runs.append(asyncio.run(reminders_run(stack, count, args.schedulers, args, i)))
                print(report(runs[-1:], None, args) + "\n", flush=True)  # in case a later run never finishes
        if args.emails > 0:
            if runs:
                wait_for_idle(args.idle_wait)
            print("(b) email throughput ...", flush=True)
            mail = asyncio.run(email_run(stack, args))
        stack.stop_workers()
        stop_process(stack.api)
        problems = log_problems(stack.logs)
        text = report(runs, mail, args)
        text += f"\nprocess logs: {problems[0]} tracebacks, {problems[1]} ERROR lines"
        if problems[2]:
            text += "\nfirst traceback:\n" + problems[2]
        ok = all(r.passed for r in runs) and (mail is None or mail.passed) and problems[0] == 0
        if args.keep_logs or not ok:
            kept = REPO / "bench" / "results" / f"workers-logs-{time.strftime('%Y%m%d-%H%M%S')}"
            kept.mkdir(parents=True, exist_ok=True)
            for log in stack.logs:
                with contextlib.suppress(OSError):
                    shutil.copyfile(log, kept / log.name)
            text += f"\nprocess logs kept in {kept.relative_to(REPO)}"
        print("\n" + text)
        print(f"\ntotal time {time.monotonic() - started:.0f} s; "
              f"{'all checks passed' if ok else 'SOME CHECKS FAILED, see above'}")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "json"},
                                             "reminder_runs": [r.as_dict() for r in runs],
                                             "email": mail.as_dict() if mail else None}, indent=2, default=str))
        return 0 if ok else 1
    finally:
        stack.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted; every process was stopped and the temporary folder removed", file=sys.stderr)
        sys.exit(130)
