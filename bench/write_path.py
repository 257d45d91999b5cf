"""The write path under load: booking create and confirm driven by wrk, and commit → SSE delivery.

    .venv/bin/python bench/write_path.py [--engine sqlite|postgres|both] [--concurrency 32] [--requests 2000]

Needs Debian's `wrk` (`apt-get install wrk`); it installs nothing and says so when wrk is missing.
For each engine it starts everything it needs and removes it afterwards: a private redis-server
(EmbeddedRedis, no persistence), a fresh database (a SQLite file in a temporary folder, or
`CREATE DATABASE bookwire_bench_<hex>` on the local PostgreSQL), `bookwire migrate` and one
`bookwire api` process (one uvicorn worker). It registers a provider and some customers and creates
resources of capacity 1 that require confirmation; booking number i goes to resource i mod R at
slot i div R (an hour apart, 30 minutes long), so no create may conflict. Then, with wrk
(`--threads` threads, `--concurrency` HTTP/1.1 keep-alive connections, a Lua script that sends
each planned request exactly once):

  (a) create    POST /v1/bookings                  as the customers; every answer must be 201;
  (b) confirm   POST /v1/bookings/{id}/confirm     as the provider, each booking of (a); every answer
                                                   must be 200;

each after an unmeasured warm-up of the same kind. During (b) an SSE client subscribed as the owner
(the provider) measures, for every `booking.confirmed`, the time from the booking's `updated_at` in
the event (the commit, as written by the API) to the event's arrival; every one must arrive.

For each phase: requests/s, latency p50/p99/max (per request, measured in the Lua script), the
answers that were not the expected ones, and the CPU time of the API process, PostgreSQL, Redis,
wrk (the load generator), this script (the SSE client) and the rest of the machine.
Exit status 0 when every request and event was as expected, 1 otherwise, 2 when wrk is missing or
PostgreSQL was asked for and is unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from common import (  # noqa: E402
    POSTGRES_URL,
    Actor,
    api_server,
    create_resources,
    fmt,
    keep_log,
    percentile,
    postgres_reachable,
    register_users,
    server_log_problems,
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
    process_alive,
    reaped_children_cpu_seconds,
    stop_process,
)

from app.embedded_redis import EmbeddedRedis  # noqa: E402

SLOT = timedelta(hours=1)               # bookings on one resource start an hour apart ...
BOOKING_LENGTH = timedelta(minutes=30)  # ... and last half an hour: never adjacent, never overlapping
NOTE = "bench booking"                  # notes = f"{NOTE} {index}": how the Lua script matches an answer to its request
WRK_SOCKET_TIMEOUT = "120s"             # wrk drops latencies above its --timeout from its own histogram
SSE_PATH = "/v1/events/stream"
DONE_LINE = b"wrk-thread-done"
RESULT_PREFIX = b"bench-result "

# The wrk script. wrk has no request-count option: `delay()`, which wrk calls before each request of
# a connection, hands out this thread's planned requests one by one and then parks the connection for
# an hour; when the thread has all its answers it says so on stdout and stops, and the benchmark
# interrupts wrk (SIGINT) once every thread has, so no request beyond the plan is ever sent. Latency is
# taken here, per request, on CLOCK_MONOTONIC (LuaJIT's FFI), from `request()` to `response()`, the
# answer matched to its request by the booking's notes: wrk's own histogram is "corrected" for
# coordinated omission at the end of the run (synthetic samples), which a closed loop must not have.
# When a connection breaks with a request in flight, wrk reconnects and asks `request()` again without
# `delay()`: that request is lost, and a `GET /health` stands in for it so that the count still ends.
LUA_SCRIPT = r"""
local DATA = "@DATA@"
local EXPECT = @EXPECT@

local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now()  -- CLOCK_MONOTONIC (1), the clock of Python's time.monotonic()
   ffi.C.clock_gettime(1, ts)
   return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end

-- main state: number the threads, collect their figures at the end
local threads = {}

function setup(thread)
   thread:set("id", #threads)
   threads[#threads + 1] = thread
end

-- thread state
local reqs, keys, quota = {}, {}, 0
local reserved, sent = 0, 0
local started = {}
local FILLER
answered, unmatched, lost, fillers, first_start, last_end = 0, 0, 0, 0, 0, 0
lat = {}
ends = {}  -- "key:monotonic seconds" of each matched answer
statuses = {}
samples = {}

function init(args)
   FILLER = wrk.format("GET", "/health", {}, nil)  -- here: wrk sets the Host header just before init()
   for line in io.lines(DATA .. id) do
      local key, method, path, token, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      local headers = { ["Authorization"] = "Bearer " .. token }
      if body ~= "" then headers["Content-Type"] = "application/json" end
      reqs[#reqs + 1] = wrk.format(method, path, headers, body)
      keys[#keys + 1] = key
   end
   quota = #reqs
end

function delay()
   if reserved >= quota then return 3600000 end
   reserved = reserved + 1
   return 0
end

function request()
   if reserved == 0 then return reqs[1] end  -- wrk's syntax check of the script, before the run
   if sent >= reserved then  -- a re-send after a broken connection: its request is lost
      lost = lost + 1
      return FILLER
   end
   sent = sent + 1
   local t = now()
   if sent == 1 then first_start = t end
   started[keys[sent]] = t
   return reqs[sent]
end

function response(status, headers, body)
   local t = now()
   answered = answered + 1
   if body == '{"status":"ok"}' then
      fillers = fillers + 1
   else
      local key = body:match("@NOTE@ (%d+)")
      local t0 = key and started[key]
      if t0 then
         lat[#lat + 1] = (t - t0) * 1000
         ends[#ends + 1] = string.format("\"%s\":%.6f", key, t)
         started[key] = nil
      end
      if status ~= EXPECT then
         statuses[status] = (statuses[status] or 0) + 1
         if #samples < 5 then samples[#samples + 1] = status .. " " .. body:sub(1, 300) end
      elseif not t0 then
         unmatched = unmatched + 1
      end
   end
   if answered == quota then
      last_end = t
      io.write("wrk-thread-done\n")
      io.flush()
      wrk.thread:stop()
   end
end

local function jstr(s)
   return '"' .. (s:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end)) .. '"'
end

function done(summary, latency, requests)
   local parts = {}
   for i, thread in ipairs(threads) do
      local st, sm, ls = {}, {}, {}
      for code, n in pairs(thread:get("statuses")) do st[#st + 1] = '"' .. code .. '":' .. n end
      for _, s in ipairs(thread:get("samples")) do sm[#sm + 1] = jstr(s) end
      for j, v in ipairs(thread:get("lat")) do ls[j] = string.format("%.3f", v) end
      parts[i] = string.format('{"answered":%d,"unmatched":%d,"lost":%d,"fillers":%d,"first_start":%.6f,'
         .. '"last_end":%.6f,"statuses":{%s},"samples":[%s],"latencies_ms":[%s],"ends":{%s}}',
         thread:get("answered"), thread:get("unmatched"), thread:get("lost"), thread:get("fillers"),
         thread:get("first_start"), thread:get("last_end"),
         table.concat(st, ","), table.concat(sm, ","), table.concat(ls, ","), table.concat(thread:get("ends"), ","))
   end
   local e = summary.errors
   io.write(string.format('bench-result {"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,'
      .. '"write":%d,"status":%d,"timeout":%d},"wrk_corrected_p50_ms":%.3f,"wrk_corrected_p99_ms":%.3f,'
      .. '"threads":[%s]}\n',
      summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50) / 1000, latency:percentile(99) / 1000, table.concat(parts, ",")))
end
"""


def find_wrk() -> str | None:
    """The wrk executable (`BENCH_WRK` overrides the search on PATH)."""
    return os.environ.get("BENCH_WRK") or shutil.which("wrk")


# --------------------------------------------------------------------------------------------------
# CPU accounting


@dataclass
class CpuSnapshot:
    """CPU seconds used so far by each party (None where it cannot be read)."""

    api: float | None
    redis: float | None
    postgres: dict[int, float] | None
    bench: float
    children: float   # reaped children: wrk, once it has exited
    machine: float

    @classmethod
    def take(cls, api_pid: int, redis_pid: int | None, measure_postgres: bool) -> CpuSnapshot:
        return cls(cpu_seconds(api_pid), cpu_seconds(redis_pid) if redis_pid else None,
                   postgres_cpu_by_pid() if measure_postgres else None, own_cpu_seconds(),
                   reaped_children_cpu_seconds(), machine_busy_seconds())


@dataclass
class CpuUse:
    """CPU seconds used during a phase."""

    api: float | None
    postgres: float | None
    redis: float | None
    wrk: float
    bench: float
    machine: float

    @classmethod
    def between(cls, a: CpuSnapshot, b: CpuSnapshot) -> CpuUse:
        def delta(x: float | None, y: float | None) -> float | None:
            return None if x is None or y is None else y - x

        pg = None if a.postgres is None or b.postgres is None else postgres_cpu_delta(a.postgres, b.postgres)
        return cls(delta(a.api, b.api), pg, delta(a.redis, b.redis), b.children - a.children,
                   b.bench - a.bench, b.machine - a.machine)

    @property
    def other(self) -> float:
        """The rest of the machine: the kernel's own work, unrelated load (should be near 0)."""
        return self.machine - sum(x or 0.0 for x in (self.api, self.postgres, self.redis, self.wrk, self.bench))

    def as_dict(self) -> dict[str, float | None]:
        return {"api": self.api, "postgres": self.postgres, "redis": self.redis, "wrk": self.wrk,
                "bench_process": self.bench, "machine": self.machine, "other": self.other}


# --------------------------------------------------------------------------------------------------
# Load generation with wrk


@dataclass
class Planned:
    """One request for wrk to send once; `key` is the booking's index, found again in the answer."""

    key: int
    method: str
    path: str
    token: str
    body: str = ""


@dataclass
class PhaseResult:
    """What one wrk run measured."""

    name: str
    planned: int
    expect: int
    answered: int = 0
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    samples: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    answered_at: dict[int, float] = field(default_factory=dict)  # key -> when wrk had the answer (monotonic)
    wall_seconds: float = 0.0
    cpu: CpuUse | None = None
    wrk: dict[str, Any] = field(default_factory=dict)
    socket_errors: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return self.planned - self.ok

    @property
    def rps(self) -> float:
        return self.answered / self.wall_seconds if self.wall_seconds else 0.0

    def per_request_ms(self, seconds: float | None) -> float | None:
        return None if seconds is None or not self.answered else seconds * 1000 / self.answered

    def as_dict(self) -> dict[str, Any]:
        cpu = self.cpu
        return {
            "phase": self.name, "requests": self.planned, "answered": self.answered, "ok": self.ok,
            "failures": dict(self.failures), "samples": self.samples, "wall_seconds": round(self.wall_seconds, 3),
            "requests_per_second": round(self.rps, 1), "p50_ms": round(percentile(self.latencies_ms, 0.5), 2),
            "p99_ms": round(percentile(self.latencies_ms, 0.99), 2),
            "max_ms": round(max(self.latencies_ms, default=0.0), 2),
            "cpu_seconds": cpu.as_dict() if cpu else None,
            "api_cpu_ms_per_request": self.per_request_ms(cpu.api if cpu else None),
            "wrk_cpu_ms_per_request": self.per_request_ms(cpu.wrk if cpu else None),
            "wrk_summary": {k: v for k, v in self.wrk.items() if k != "threads"},
        }


@dataclass
class Target:
    """The system under test, as the phases see it."""

    base_url: str
    api_pid: int
    redis_pid: int | None
    measure_postgres: bool
    workdir: Path


def write_wrk_files(stem: Path, planned: list[Planned], threads: int, expect: int) -> Path:
    """The Lua script and one data file per wrk thread (requests dealt out in turn); the script's path."""
    for t in range(threads):
        lines = [f"{p.key}\t{p.method}\t{p.path}\t{p.token}\t{p.body}\n" for p in planned[t::threads]]
        Path(f"{stem}.data.{t}").write_text("".join(lines))
    script = Path(f"{stem}.lua")
    script.write_text(LUA_SCRIPT.replace("@DATA@", f"{stem}.data.").replace("@EXPECT@", str(expect))
                      .replace("@NOTE@", NOTE))
    return script


async def run_wrk(name: str, planned: list[Planned], expect: int, target: Target, wrk: str,
                  args: argparse.Namespace) -> PhaseResult:
    """Send each planned request once with wrk and collect what its script measured."""
    result = PhaseResult(name, len(planned), expect)
    if not planned:
        return result
    threads = min(args.threads, len(planned))
    connections = max(args.concurrency, threads)
    script = write_wrk_files(target.workdir / name.replace(" ", "-"), planned, threads, expect)
    argv = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{int(args.phase_timeout) + 60}s",
            "--timeout", WRK_SOCKET_TIMEOUT, "-s", str(script), target.base_url]
    before = CpuSnapshot.take(target.api_pid, target.redis_pid, target.measure_postgres)
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, limit=2**26,
        preexec_fn=die_with_parent)
    assert process.stdout is not None and process.stderr is not None
    output: list[bytes] = []
    try:
        async def until_threads_done() -> None:
            assert process.stdout is not None
            finished = 0
            while finished < threads:
                line = await process.stdout.readline()
                if not line:
                    return  # wrk exited (an error in the script, say): the stderr tells
                output.append(line)
                finished += line.strip() == DONE_LINE

        reader = asyncio.ensure_future(until_threads_done())
        deadline = time.monotonic() + args.phase_timeout
        try:
            while not reader.done():
                await asyncio.wait({reader}, timeout=0.5)
                if reader.done():
                    break
                if not process_alive(target.api_pid):
                    result.failures["the API process died"] += 1
                    break
                if time.monotonic() > deadline:
                    result.failures[f"phase timeout ({args.phase_timeout:.0f} s)"] += 1
                    break
        finally:
            reader.cancel()
        # wrk's main thread sleeps for -d; SIGINT ends the sleep and makes it report. Repeat it: a
        # signal that came before wrk installed its handler would be ignored.
        for _ in range(5):
            if process.returncode is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 2)
        rest, errors = await asyncio.wait_for(process.communicate(), 10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    after = CpuSnapshot.take(target.api_pid, target.redis_pid, target.measure_postgres)
    result.cpu = CpuUse.between(before, after)
    output.extend(rest.splitlines())
    report = next((line[len(RESULT_PREFIX):] for line in output if line.startswith(RESULT_PREFIX)), None)
    if report is None:
        result.failures["wrk gave no result"] += 1
        result.samples.append(f"wrk exit {process.returncode}: {errors.decode(errors='replace')[-1000:]}")
        return result
    data = json.loads(report.decode(errors="replace"))
    result.wrk = data
    starts = [t["first_start"] for t in data["threads"] if t["answered"]]
    ends = [t["last_end"] for t in data["threads"] if t["last_end"]]
    if starts and ends:
        result.wall_seconds = max(ends) - min(starts)
    else:  # a thread never finished: fall back to wrk's own run time
        result.wall_seconds = data["duration_us"] / 1e6
    for thread in data["threads"]:
        answered = thread["answered"] - thread["fillers"]
        result.answered += answered
        result.latencies_ms.extend(thread["latencies_ms"])
        result.answered_at.update({int(key): at for key, at in thread.get("ends", {}).items()})
        wrong = sum(thread["statuses"].values())
        for status, count in thread["statuses"].items():
            result.failures[f"HTTP {status}"] += count
        if thread["unmatched"]:  # the expected status, but the body does not name the booking
            result.failures["answer without its booking"] += thread["unmatched"]
        result.ok += answered - wrong - thread["unmatched"]
        result.samples.extend(thread["samples"][: max(0, 5 - len(result.samples))])
    if result.planned > result.answered:
        result.failures["no answer (connection broken, or the phase timed out)"] += result.planned - result.answered
    # wrk's socket errors are shown but not failures by themselves: the server closing a connection
    # parked at the end of the run is one; a request they cost shows up as "no answer" above.
    result.socket_errors = {k: v for k, v in data["errors"].items() if v and k != "status"}
    return result


# --------------------------------------------------------------------------------------------------
# The SSE client


class SSEWatcher(asyncio.Protocol):
    """One SSE stream (raw HTTP/1.1, chunked), timing every `booking.confirmed` from its `updated_at`
    to its arrival; reconnects with `Last-Event-ID` if the server closes the stream."""

    def __init__(self, base_url: str, token: str) -> None:
        host_port = base_url.removeprefix("http://")
        self.host, port = host_port.rsplit(":", 1)
        self.port = int(port)
        self.token = token
        self.arrivals: dict[str, float] = {}    # booking id -> delay in ms (first arrival)
        self.arrived_at: dict[str, float] = {}  # booking id -> time.monotonic() of its first arrival
        self.duplicates = 0
        self.reconnects = 0
        self.last_id: str | None = None
        self.started = asyncio.get_running_loop().create_future()
        self.waiting_for: set[str] = set()
        self.all_arrived = asyncio.Event()
        self.stopping = False
        self.error: str | None = None
        self._transport: asyncio.Transport | None = None
        self._reset()

    def _reset(self) -> None:
        self._raw = bytearray()
        self._body = bytearray()
        self._head_done = False
        self._chunked = False
        self._chunk_left = 0
        self._skip = 0

    def expect(self, booking_ids: list[str]) -> None:
        """Set `all_arrived` once each of these bookings' `booking.confirmed` has arrived."""
        self.waiting_for = set(booking_ids) - self.arrivals.keys()
        if not self.waiting_for:
            self.all_arrived.set()

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self, self.host, self.port)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._reset()
        resume = f"Last-Event-ID: {self.last_id}\r\n" if self.last_id else ""
        transport.write((f"GET {SSE_PATH} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                         f"Accept: text/event-stream\r\nAuthorization: Bearer {self.token}\r\n{resume}\r\n").encode())

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self._raw += data
        if not self._head_done:
            end = self._raw.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._raw[:end]).decode("latin-1").lower()
            del self._raw[:end + 4]
            self._head_done = True
            status = head.split(None, 2)[1] if head.count(" ") else "?"
            if status != "200":
                self.error = f"the stream answered {status}"
                if not self.started.done():
                    self.started.set_result(None)
                return
            self._chunked = "transfer-encoding: chunked" in head
        self._dechunk()
        body = self._body
        while (end := body.find(b"\n\n")) >= 0:
            frame = bytes(body[:end])
            del body[:end + 2]
            self._frame(frame, now)

    def _dechunk(self) -> None:
        raw = self._raw
        if not self._chunked:
            self._body += raw
            raw.clear()
            return
        while raw:
            if self._chunk_left:
                take = min(self._chunk_left, len(raw))
                self._body += raw[:take]
                del raw[:take]
                self._chunk_left -= take
                if not self._chunk_left:
                    self._skip = 2  # the CRLF after the chunk's data
            elif self._skip:
                take = min(self._skip, len(raw))
                del raw[:take]
                self._skip -= take
            else:
                end = raw.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(raw[:end]).split(b";")[0], 16)
                del raw[:end + 2]
                if size == 0:
                    return
                self._chunk_left = size

    def _frame(self, frame: bytes, now: float) -> None:
        if frame.startswith(b"retry:"):
            if not self.started.done():
                self.started.set_result(None)
            return
        if frame.startswith(b":"):
            return  # heartbeat
        fields = dict(line.split(b": ", 1) for line in frame.split(b"\n") if b": " in line)
        if b"id" in fields:
            self.last_id = fields[b"id"].decode()
        if fields.get(b"event") != b"booking.confirmed":
            return
        data = json.loads(fields[b"data"])["data"]
        committed = datetime.fromisoformat(data["updated_at"]).timestamp()
        if data["id"] in self.arrivals:
            self.duplicates += 1
        else:
            self.arrivals[data["id"]] = (now - committed) * 1000
            self.arrived_at[data["id"]] = time.monotonic()
            if self.waiting_for:
                self.waiting_for.discard(data["id"])
                if not self.waiting_for:
                    self.all_arrived.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self.stopping:
            return
        self.reconnects += 1
        asyncio.get_running_loop().create_task(self._reopen())

    async def _reopen(self) -> None:
        for _ in range(50):
            try:
                await self.open()
                return
            except OSError:
                await asyncio.sleep(0.1)
        self.error = "the stream closed and could not be reopened"

    def close(self) -> None:
        self.stopping = True
        if self._transport is not None:
            self._transport.close()


@dataclass
class SSEResult:
    """Commit → SSE delivery of the measured confirms."""

    expected: int
    arrived: int
    delays_ms: list[float]
    duplicates: int
    reconnects: int
    error: str | None
    after_answer_ms: list[float] = field(default_factory=list)  # arrival - the confirm's answer at wrk

    @property
    def ok(self) -> bool:
        return self.arrived == self.expected and not self.duplicates and self.error is None

    def as_dict(self) -> dict[str, Any]:
        return {"expected": self.expected, "arrived": self.arrived, "duplicates": self.duplicates,
                "reconnects": self.reconnects, "error": self.error,
                "p50_ms": round(percentile(self.delays_ms, 0.5), 2),
                "p99_ms": round(percentile(self.delays_ms, 0.99), 2),
                "max_ms": round(max(self.delays_ms, default=0.0), 2),
                "after_answer_p50_ms": round(percentile(self.after_answer_ms, 0.5), 2),
                "after_answer_p99_ms": round(percentile(self.after_answer_ms, 0.99), 2)}


# --------------------------------------------------------------------------------------------------
# The scenario


@dataclass
class Fixture:
    """Who books what."""

    provider: Actor
    customers: list[Actor]
    resources: list[str]
    base: datetime

    def create(self, index: int) -> Planned:
        """Booking number `index`: its own resource and slot, so it never conflicts."""
        resource = self.resources[index % len(self.resources)]
        customer = self.customers[index % len(self.customers)]
        start = self.base + SLOT * (index // len(self.resources))
        body = json.dumps({"resource_id": resource, "starts_at": start.isoformat(),
                           "ends_at": (start + BOOKING_LENGTH).isoformat(), "notes": f"{NOTE} {index}"},
                          separators=(",", ":"))
        return Planned(index, "POST", "/v1/bookings", customer.token, body)


async def bookings_by_index(client: httpx.AsyncClient, provider: Actor) -> dict[int, tuple[str, str]]:
    """Every booking on the provider's resources: index (from its notes) -> (id, status)."""
    found: dict[int, tuple[str, str]] = {}
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 200}
        if cursor:
            params["cursor"] = cursor
        answer = await client.get("/v1/bookings", params=params, headers=provider.headers)
        if answer.status_code != 200:
            raise RuntimeError(f"list bookings: {answer.status_code} {answer.text[:500]}")
        page = answer.json()
        for item in page["items"]:
            if item["notes"].startswith(NOTE + " "):
                found[int(item["notes"].rsplit(" ", 1)[1])] = (item["id"], item["status"])
        cursor = page["next_cursor"]
        if not cursor:
            return found


async def measure(target: Target, wrk: str, args: argparse.Namespace
                  ) -> tuple[Fixture, list[PhaseResult], SSEResult, list[str]]:
    """Set up the users and resources, then run the phases; problems outside the phases go in the list."""
    problems: list[str] = []
    async with httpx.AsyncClient(base_url=target.base_url, timeout=60) as client:
        provider, customers = await register_users(client, args.customers)
        resources = await create_resources(client, provider, args.resources)
        base = (datetime.now(UTC) + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
        fixture = Fixture(provider, customers, resources, base)
        warm = range(args.warmup)
        measured = range(args.warmup, args.warmup + args.requests)
        results = []
        if args.warmup:
            results.append(await run_wrk("warm-up create", [fixture.create(i) for i in warm], 201, target, wrk, args))
        results.append(await run_wrk("create", [fixture.create(i) for i in measured], 201, target, wrk, args))

        bookings = await bookings_by_index(client, provider)
        missing = [i for i in range(args.warmup + args.requests) if i not in bookings]
        not_pending = [i for i, (_, status) in bookings.items() if status != "pending"]
        if missing or not_pending:
            problems.append(f"after the creates: {len(missing)} bookings missing, {len(not_pending)} not pending")

        def confirms(indexes: range) -> list[Planned]:
            return [Planned(i, "POST", f"/v1/bookings/{bookings[i][0]}/confirm", provider.token)
                    for i in indexes if i in bookings and bookings[i][1] == "pending"]

        watcher = SSEWatcher(target.base_url, provider.token)
        await watcher.open()
        try:
            await asyncio.wait_for(watcher.started, 10)
            if watcher.error:
                raise RuntimeError(f"SSE as the owner: {watcher.error}")
            if args.warmup:
                results.append(await run_wrk("warm-up confirm", confirms(warm), 200, target, wrk, args))
            planned = confirms(measured)
            expected = [p.path.split("/")[3] for p in planned]
            watcher.expect(expected)
            confirmed = await run_wrk("confirm", planned, 200, target, wrk, args)
            results.append(confirmed)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watcher.all_arrived.wait(), args.sse_wait)
        finally:
            watcher.close()
        delays = [watcher.arrivals[b] for b in expected if b in watcher.arrivals]
        # After its answer: both clocks are CLOCK_MONOTONIC. The answer leaves right after the COMMIT,
        # so this is the relay's part, with the event loop's queueing left out (negative: the event
        # came first).
        arrived = {p.key: watcher.arrived_at.get(p.path.split("/")[3]) for p in planned}
        after_answer = [(at - confirmed.answered_at[key]) * 1000 for key, at in arrived.items()
                        if at is not None and key in confirmed.answered_at]
        sse = SSEResult(len(expected), len(delays), delays, watcher.duplicates, watcher.reconnects, watcher.error,
                        after_answer)
        return fixture, results, sse, problems


# --------------------------------------------------------------------------------------------------
# Reporting


def report(engine: str, args: argparse.Namespace, fixture: Fixture, results: list[PhaseResult], sse: SSEResult,
           api_pid: int, log_problems: tuple[int, int, str], problems: list[str]) -> str:
    out = [f"== engine: {engine} =="]
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    out.append(f"machine: {os.cpu_count()} cores ({platform.machine()}, Linux {platform.release()}), "
               f"Python {platform.python_version()}; wrk, API, database and Redis share these cores; "
               f"load average now {load}")
    out.append(f"server: 1 `bookwire api` process (1 uvicorn worker), pid {api_pid}; load: wrk, {args.threads} "
               f"threads, {args.concurrency} HTTP/1.1 keep-alive connections, one request in flight on each")
    out.append(f"data: {len(fixture.customers)} customers, 1 provider, {len(fixture.resources)} resources "
               "(capacity 1, requires confirmation, one booking per slot)")
    header = (f"{'phase':<16} {'requests':>8} {'ok':>6} {'failed':>6} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'max ms':>7} {'API CPU s':>9} {'API ms/req':>10} {'PG CPU s':>8} {'Redis CPU s':>11} "
              f"{'wrk CPU s':>9} {'wrk ms/req':>10} {'bench CPU s':>11} {'other CPU s':>11}")
    out += [header, "-" * len(header)]
    for r in results:
        cpu = r.cpu
        out.append(
            f"{r.name:<16} {r.planned:>8} {r.ok:>6} {r.failed:>6} {r.rps:>7.1f} "
            f"{percentile(r.latencies_ms, 0.5):>7.1f} {percentile(r.latencies_ms, 0.99):>7.1f} "
            f"{max(r.latencies_ms, default=0.0):>7.1f} {fmt(cpu.api if cpu else None, 2):>9} "
            f"{fmt(r.per_request_ms(cpu.api if cpu else None), 2):>10} {fmt(cpu.postgres if cpu else None, 2):>8} "
            f"{fmt(cpu.redis if cpu else None, 2):>11} {fmt(cpu.wrk if cpu else None, 2):>9} "
            f"{fmt(r.per_request_ms(cpu.wrk if cpu else None), 3):>10} {fmt(cpu.bench if cpu else None, 2):>11} "
            f"{fmt(cpu.other if cpu else None, 2):>11}")
    out.append("CPU columns are seconds of CPU time during the phase (/proc): API = the `bookwire api` process, "
               "PG = all `postgres` processes, Redis = the private redis-server, wrk = the load generator, "
               "bench = this script (the SSE client), other = the rest of the machine (kernel, unrelated load)")
    out.append(f"commit -> SSE delivery (the owner's stream, `booking.confirmed` of the {sse.expected} measured "
               f"confirms, from the event's updated_at to its arrival): {sse.arrived}/{sse.expected} arrived, "
               f"p50 {percentile(sse.delays_ms, 0.5):.1f} ms, p99 {percentile(sse.delays_ms, 0.99):.1f} ms, "
               f"max {max(sse.delays_ms, default=0.0):.1f} ms; {sse.duplicates} duplicates, "
               f"{sse.reconnects} reconnects")
    out.append(f"answer -> SSE delivery (the same events, from the moment wrk had the confirm's answer, sent after"
               f" the COMMIT, to the event's arrival; negative: the event came first; {len(sse.after_answer_ms)}"
               f" matched): p50 {percentile(sse.after_answer_ms, 0.5):.1f} ms, p99"
               f" {percentile(sse.after_answer_ms, 0.99):.1f} ms, max {max(sse.after_answer_ms, default=0.0):.1f} ms")
    for r in results:
        if r.failures:
            kinds = ", ".join(f"{k} x{v}" for k, v in r.failures.most_common())
            out.append(f"!! {r.name}: {kinds}")
            out.extend(f"   e.g. {s}" for s in r.samples)
        if r.socket_errors:
            out.append(f"   {r.name}: wrk socket errors " + ", ".join(f"{k} {v}" for k, v in r.socket_errors.items()))
    if not sse.ok:
        out.append(f"!! SSE: {sse.expected - sse.arrived} events missing, {sse.duplicates} duplicates"
                   f"{f', {sse.error}' if sse.error else ''}")
    out.extend(f"!! {p}" for p in problems)
    tracebacks, errors, first = log_problems
    out.append(f"server log: {tracebacks} tracebacks, {errors} ERROR/WARNING lines")
    if first:
        out.append("first traceback in the server log:\n" + first)
    return "\n".join(out)


def bench_engine(engine: str, wrk: str, args: argparse.Namespace, workdir: Path) -> tuple[str, bool, dict[str, Any]]:
    """One engine, start to finish: Redis, database, API, the phases, the report."""
    data_dir = workdir / engine
    data_dir.mkdir()
    redis = EmbeddedRedis(data_dir / "redis", persist=False)
    try:
        redis_url = redis.start()
        with api_server(engine, data_dir, redis_url, args.postgres_url) as server:
            process = server.process
            print(f"[{engine}] api pid {process.pid} at {server.base_url}; measuring ...", flush=True)
            target = Target(server.base_url, process.pid, redis.process.pid if redis.process else None,
                            engine == "postgres", data_dir)
            fixture, results, sse, problems = asyncio.run(measure(target, wrk, args))
            alive = process.poll() is None
            stop_process(process)
            log_problems = server_log_problems(server.log)
            text = report(engine, args, fixture, results, sse, process.pid, log_problems, problems)
            if not alive:
                text += f"\n!! the API process exited during the run (code {process.returncode})"
            ok = (alive and log_problems[0] == 0 and not problems and sse.ok
                  and all(r.ok == r.planned for r in results))
            if args.keep_logs or not ok:
                kept = keep_log(server.log, f"write-path-api-{engine}")
                text += f"\nserver log kept in {kept.relative_to(REPO)}"
            return text, ok, {"engine": engine, "phases": [r.as_dict() for r in results], "sse": sse.as_dict(),
                              "problems": problems, "server_log_tracebacks": log_problems[0]}
    finally:
        redis.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--concurrency", type=int, default=32, help="wrk connections, one request in flight each (32)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per phase (2000)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="unmeasured requests before each phase (default min(200, max(requests/10, concurrency)))")
    parser.add_argument("--customers", type=int, default=8, help="customers making bookings (8)")
    parser.add_argument("--resources", type=int, default=None,
                        help="resources the bookings are spread over (default: the concurrency)")
    parser.add_argument("--postgres-url", default=POSTGRES_URL,
                        help="PostgreSQL server to create the scratch database on (env BENCH_POSTGRES_URL)")
    parser.add_argument("--phase-timeout", type=float, default=600, help="seconds before a phase is abandoned (600)")
    parser.add_argument("--sse-wait", type=float, default=15,
                        help="seconds to wait after the confirm phase for the last events (15)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--keep-logs", action="store_true",
                        help="copy each API log to bench/results/ (always done when something failed)")
    args = parser.parse_args(argv)
    for name in ("concurrency", "threads", "requests", "customers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup is None:
        args.warmup = min(200, max(args.requests // 10, args.concurrency))
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    args.resources = args.resources or args.concurrency
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wrk = find_wrk()
    if wrk is None:
        print("bench/write_path.py needs wrk, the HTTP load generator: `apt-get install wrk` (Debian/Ubuntu), "
              "or set BENCH_WRK to its path", file=sys.stderr)
        return 2
    interrupt_on_sigterm()
    started = time.monotonic()
    idle_load = busy_cores(1.0)
    print(f"bench/write_path.py: concurrency {args.concurrency} ({args.threads} wrk threads), {args.requests} "
          f"requests per phase after {args.warmup} warm-up, {os.cpu_count()} cores; before starting, the machine "
          f"was busy {idle_load:.2f} of {os.cpu_count()} cores", flush=True)
    if idle_load > 0.2:
        print("!! other processes are using the CPU: the figures below will be lower and noisier than on a "
              "quiet machine (see the `other CPU s` column)", flush=True)
    engines = ["sqlite", "postgres"] if args.engine == "both" else [args.engine]
    if "postgres" in engines and not postgres_reachable(args.postgres_url):
        if args.engine == "postgres":
            print(f"PostgreSQL is not reachable at {args.postgres_url}", file=sys.stderr)
            return 2
        print(f"!! PostgreSQL is not reachable at {args.postgres_url}: skipping it", file=sys.stderr)
        engines.remove("postgres")
    records: list[dict[str, Any]] = []
    all_ok = True
    workdir = Path(tempfile.mkdtemp(prefix="bookwire-bench-"))
    try:
        for engine in engines:
            text, ok, record = bench_engine(engine, wrk, args, workdir)
            print(text + "\n", flush=True)
            records.append(record)
            all_ok = all_ok and ok
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if len(records) > 1:
        print("== summary (req/s, p99 ms, API CPU ms/req; commit -> SSE p50/p99 ms) ==")
        for record in records:
            cells = [f"{p['phase']}: {p['requests_per_second']} req/s, p99 {p['p99_ms']} ms, "
                     f"API {fmt(p['api_cpu_ms_per_request'], 2)} ms/req"
                     for p in record["phases"] if not p["phase"].startswith("warm-up")]
            sse = record["sse"]
            cells.append(f"SSE {sse['p50_ms']}/{sse['p99_ms']} ms")
            print(f"{record['engine']:<8} " + " | ".join(cells))
    verdict = "all requests and events as expected" if all_ok else "FAILURES, see above"
    print(f"\ntotal time {time.monotonic() - started:.0f} s; {verdict}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "concurrency": args.concurrency, "threads": args.threads, "requests": args.requests,
            "warmup": args.warmup, "cores": os.cpu_count(), "engines": records}, indent=2))
    return 0 if all_ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the finally blocks have already cleaned up
        print("\ninterrupted; the server, Redis and the scratch database were stopped/removed", file=sys.stderr)
        sys.exit(130)
