"""Throughput and latency of booking creation and booking listing, on SQLite and on PostgreSQL.

    .venv/bin/python bench/bookings.py [--engine sqlite|postgres|both] [--concurrency 32] [--requests 2000]
    .venv/bin/python bench/bookings.py --url http://127.0.0.1:8000 [--server-pid PID]

By default, for each engine it starts everything it needs and removes it afterwards: a private
redis-server (EmbeddedRedis, no persistence), a fresh database (a SQLite file in a temporary folder,
or `CREATE DATABASE bookwire_bench_<hex>` on the local PostgreSQL), `bookwire migrate`, then one
`bookwire api` process (one uvicorn worker) on a free loopback port. With `--url` it targets a
server that is already running instead (and leaves behind the users, resources and bookings it made).

Then it registers several customers and one provider, creates resources (capacity 1, every booking
in its own time slot, an hour apart from the next one on the same resource, so no create may
conflict), and measures with `--concurrency` worker tasks, each with its own httpx.AsyncClient
(one HTTP/1.1 keep-alive connection, one request in flight), after a short unmeasured warm-up each:

  (a) POST /v1/bookings                 every answer must be 201;
  (b) GET  /v1/bookings?limit=50        as the customer who made every other booking (1100 with
                                        the defaults); every answer must be 200 with a full page.

For each phase it prints requests/s, p50/p99/max latency, the answers that were not the expected
ones, and the CPU time used by the API process (from /proc/<pid>/stat), by the PostgreSQL
processes, and by this client. Exit status 1 when any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
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
    interrupt_on_sigterm,
    machine_busy_seconds,
    own_cpu_seconds,
    postgres_cpu_by_pid,
    postgres_cpu_delta,
    stop_process,
)

from app.embedded_redis import EmbeddedRedis  # noqa: E402

REQUEST_TIMEOUT = 60.0          # seconds, per request
SLOT = timedelta(hours=1)       # bookings on one resource start an hour apart ...
BOOKING_LENGTH = timedelta(minutes=30)  # ... and last half an hour: never adjacent, never overlapping


# --------------------------------------------------------------------------------------------------
# Load generation


@dataclass
class PhaseResult:
    name: str
    requests: int
    wall_seconds: float
    latencies_ms: list[float]
    ok: int
    failures: Counter[str]
    samples: list[str]
    unexpected: int = 0                    # 2xx answers whose body was not what the phase expects
    api_cpu: float | None = None
    db_cpu: float | None = None
    client_cpu: float | None = None
    machine_cpu: float | None = None       # every process on the machine, this client and the server included

    @property
    def other_cpu(self) -> float | None:
        """Machine CPU that is neither the API, PostgreSQL nor this client: Redis, the kernel, other load."""
        if self.machine_cpu is None or self.client_cpu is None:
            return None
        return self.machine_cpu - (self.api_cpu or 0) - (self.db_cpu or 0) - self.client_cpu

    @property
    def rps(self) -> float:
        return self.requests / self.wall_seconds if self.wall_seconds else 0.0

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile of all latencies (successful or not)."""
        return percentile(self.latencies_ms, q)

    def as_dict(self) -> dict[str, Any]:
        return {
            "phase": self.name, "requests": self.requests, "ok": self.ok, "unexpected": self.unexpected,
            "failures": dict(self.failures), "wall_seconds": round(self.wall_seconds, 3),
            "requests_per_second": round(self.rps, 1), "p50_ms": round(self.percentile(0.50), 2),
            "p99_ms": round(self.percentile(0.99), 2), "max_ms": round(max(self.latencies_ms, default=0), 2),
            "api_cpu_seconds": self.api_cpu, "postgres_cpu_seconds": self.db_cpu,
            "client_cpu_seconds": self.client_cpu, "machine_busy_cpu_seconds": self.machine_cpu,
            "other_cpu_seconds": self.other_cpu,
        }


@dataclass
class Fixture:
    customers: list[Actor]
    provider: Actor
    resources: list[str]
    base: datetime
    next_booking: int = 0
    bookings_of: Counter[str] = field(default_factory=Counter)

    def booking_body(self, index: int) -> tuple[Actor, dict[str, Any]]:
        """Booking number `index`: its customer and body. Distinct slots, so it never conflicts."""
        resource = self.resources[index % len(self.resources)]
        # The first customer (the one whose list phase (b) reads) makes every other booking.
        others = self.customers[1:]
        customer = self.customers[0] if index % 2 == 0 or not others else others[(index // 2) % len(others)]
        start = self.base + SLOT * (index // len(self.resources))
        body = {"resource_id": resource, "starts_at": start.isoformat(),
                "ends_at": (start + BOOKING_LENGTH).isoformat(), "notes": f"bench booking {index}"}
        return customer, body


async def set_up(client: httpx.AsyncClient, customers: int, resources: int) -> Fixture:
    provider, customer_list = await register_users(client, customers)
    resource_ids = await create_resources(client, provider, resources)
    base = (datetime.now(UTC) + timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
    return Fixture(customer_list, provider, resource_ids, base)


async def run_phase(
    name: str, total: int, concurrency: int, send: Any, pids: Pids, time_limit: float,
) -> PhaseResult:
    """`total` calls of `send(worker, i)` -> (outcome, detail) from `concurrency` workers, each with one
    request in flight; outcome is "ok", "unexpected" (a 2xx with a wrong body) or a failure label."""
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    samples: list[str] = []
    counters = {"next": 0, "ok": 0, "unexpected": 0}

    async def worker(number: int) -> None:
        while counters["next"] < total:
            index = counters["next"]
            counters["next"] += 1
            started = time.perf_counter()
            try:
                outcome, detail = await send(number, index)
            except httpx.HTTPError as exc:
                outcome, detail = f"{type(exc).__name__}", repr(exc)
            elapsed_ms = (time.perf_counter() - started) * 1000
            latencies.append(elapsed_ms)
            if outcome != "ok":
                detail = f"{detail} (request #{index}, {elapsed_ms:.0f} ms, at +{started - phase_start:.2f} s)"
            if outcome == "ok":
                counters["ok"] += 1
            elif outcome == "unexpected":
                counters["unexpected"] += 1
                if len(samples) < 5:
                    samples.append(detail)
            else:
                failures[outcome] += 1
                if len(samples) < 5:
                    samples.append(f"{outcome}: {detail}")

    api0, db0, cl0, m0 = pids.api_cpu(), pids.db_cpu(), own_cpu_seconds(), machine_busy_seconds()
    started = phase_start = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker(n) for n in range(concurrency))), time_limit)
    wall = time.perf_counter() - started
    api1, db1, cl1, m1 = pids.api_cpu(), pids.db_cpu(), own_cpu_seconds(), machine_busy_seconds()
    return PhaseResult(
        name, total, wall, latencies, counters["ok"], failures, samples, counters["unexpected"],
        api_cpu=None if api0 is None or api1 is None else api1 - api0,
        db_cpu=None if db0 is None or db1 is None else postgres_cpu_delta(db0, db1),
        client_cpu=cl1 - cl0, machine_cpu=m1 - m0,
    )


@dataclass
class Pids:
    api: int | None
    measure_postgres: bool

    def api_cpu(self) -> float | None:
        return cpu_seconds(self.api) if self.api else None

    def db_cpu(self) -> dict[int, float] | None:
        return postgres_cpu_by_pid() if self.measure_postgres else None


async def measure(base_url: str, args: argparse.Namespace, pids: Pids) -> tuple[Fixture, list[PhaseResult]]:
    def client(connections: int) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=base_url, http1=True, http2=False, timeout=REQUEST_TIMEOUT,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections))

    async with contextlib.AsyncExitStack() as stack:
        setup_client = await stack.enter_async_context(client(16))
        fixture = await set_up(setup_client, args.customers, args.resources)
        # One client with one keep-alive connection per worker: a shared pool of N connections costs the
        # client O(N) work per request in httpcore, which on a small machine steals CPU from the server.
        clients = [await stack.enter_async_context(client(1)) for _ in range(args.concurrency)]

        async def create(worker: int, _: int) -> tuple[str, str]:
            index = fixture.next_booking
            fixture.next_booking += 1
            customer, body = fixture.booking_body(index)
            answer = await clients[worker].post("/v1/bookings", json=body, headers=customer.headers)
            if answer.status_code != 201:
                return f"HTTP {answer.status_code}", answer.text[:300]
            fixture.bookings_of[customer.id] += 1
            return "ok", ""

        reader = fixture.customers[0]

        async def list_page(worker: int, _: int) -> tuple[str, str]:
            answer = await clients[worker].get("/v1/bookings", params={"limit": 50}, headers=reader.headers)
            if answer.status_code != 200:
                return f"HTTP {answer.status_code}", answer.text[:300]
            items = answer.json().get("items", [])
            expected = min(50, fixture.bookings_of[reader.id])
            if len(items) != expected:
                return "unexpected", f"200 with {len(items)} items instead of {expected}"
            return "ok", ""

        results = []
        warmup = args.warmup if args.warmup is not None else min(200, max(args.requests // 10, args.concurrency))
        # Warm-up creates also count as bookings of the list customer, so it has enough before phase (b).
        if warmup:
            results.append(await run_phase("warm-up POST", warmup, args.concurrency, create, pids, args.phase_timeout))
        results.append(await run_phase("POST /v1/bookings", args.requests, args.concurrency, create, pids,
                                       args.phase_timeout))
        if warmup:
            results.append(await run_phase("warm-up GET", warmup, args.concurrency, list_page, pids,
                                           args.phase_timeout))
        results.append(await run_phase("GET /v1/bookings?limit=50", args.requests, args.concurrency, list_page,
                                       pids, args.phase_timeout))
        return fixture, results


# --------------------------------------------------------------------------------------------------
# Reporting


def report(engine: str, args: argparse.Namespace, fixture: Fixture, results: list[PhaseResult],
           api_pid: int | None, log_problems: tuple[int, int, str] | None) -> str:
    out = []
    reader = fixture.customers[0]
    out.append(f"== engine: {engine} ==")
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    out.append(f"machine: {os.cpu_count()} cores ({platform.machine()}, Linux {platform.release()}), "
               f"Python {platform.python_version()}; client and server share these cores; load average now {load}")
    out.append(f"server: 1 `bookwire api` process (1 uvicorn worker){f', pid {api_pid}' if api_pid else ''}; "
               f"concurrency {args.concurrency} (HTTP/1.1 keep-alive connections)")
    out.append(f"data: {len(fixture.customers)} customers, 1 provider, {len(fixture.resources)} resources "
               f"(capacity 1, one booking per slot); the listing customer has {fixture.bookings_of[reader.id]} "
               f"bookings")
    header = (f"{'phase':<27} {'requests':>8} {'ok':>6} {'failed':>6} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'max ms':>7} {'API CPU s':>9} {'API CPU ms/req':>14} {'PG CPU s':>8} {'client CPU s':>12} "
              f"{'other CPU s':>11}")
    out.append(header)
    out.append("-" * len(header))
    for r in results:
        failed = r.requests - r.ok
        per_req = None if r.api_cpu is None else r.api_cpu * 1000 / r.requests
        out.append(
            f"{r.name:<27} {r.requests:>8} {r.ok:>6} {failed:>6} {r.rps:>7.1f} {r.percentile(0.5):>7.1f} "
            f"{r.percentile(0.99):>7.1f} {max(r.latencies_ms, default=0):>7.1f} {fmt(r.api_cpu, 2):>9} "
            f"{fmt(per_req, 2):>14} {fmt(r.db_cpu, 2):>8} {fmt(r.client_cpu, 2):>12} {fmt(r.other_cpu, 2):>11}"
        )
    out.append("CPU columns are seconds of CPU time during the phase: API = the `bookwire api` process "
               "(/proc/<pid>/stat utime+stime), PG = all `postgres` processes, client = this script, "
               "other = the rest of the machine (Redis, kernel, unrelated load; should be near 0)")
    for r in results:
        if r.failures or r.unexpected:
            kinds = ", ".join(f"{k} x{v}" for k, v in r.failures.most_common())
            if r.unexpected:
                kinds += f"{', ' if kinds else ''}unexpected body x{r.unexpected}"
            out.append(f"!! {r.name}: {kinds}")
            out.extend(f"   e.g. {s}" for s in r.samples)
    if log_problems is not None:
        tracebacks, errors, first = log_problems
        out.append(f"server log: {tracebacks} tracebacks, {errors} ERROR/WARNING lines")
        if first:
            out.append("first traceback in the server log:\n" + first)
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# One engine, start to finish


def bench_engine(engine: str, args: argparse.Namespace, redis_url: str, workdir: Path) -> tuple[str, bool, dict]:
    data_dir = workdir / engine
    data_dir.mkdir()
    with api_server(engine, data_dir, redis_url, args.postgres_url) as server:
        process = server.process
        print(f"[{engine}] api pid {process.pid} at {server.base_url}; measuring ...", flush=True)
        pids = Pids(process.pid, measure_postgres=engine == "postgres")
        fixture, results = asyncio.run(measure(server.base_url, args, pids))
        alive = process.poll() is None
        stop_process(process)
        problems = server_log_problems(server.log)
        text = report(engine, args, fixture, results, process.pid, problems)
        if not alive:
            text += f"\n!! the API process exited during the run (code {process.returncode})"
        ok = alive and problems[0] == 0 and all(r.ok == r.requests for r in results)
        if args.keep_logs or not ok:
            kept = keep_log(server.log, f"api-{engine}")
            text += f"\nserver log kept in {kept.relative_to(REPO)}"
        return text, ok, {"engine": engine, "phases": [r.as_dict() for r in results],
                          "server_log_tracebacks": problems[0]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (default 32)")
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per phase (default 2000)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="unmeasured requests before each phase (default min(200, max(requests/10, concurrency)))")
    parser.add_argument("--customers", type=int, default=8, help="customers making bookings (default 8)")
    parser.add_argument("--resources", type=int, default=None,
                        help="resources the bookings are spread over (default: the concurrency)")
    parser.add_argument("--url", help="benchmark an already running server instead of starting one")
    parser.add_argument("--server-pid", type=int, help="with --url: the API process, to report its CPU time")
    parser.add_argument("--postgres-url", default=POSTGRES_URL,
                        help="PostgreSQL server to create the scratch database on (env BENCH_POSTGRES_URL)")
    parser.add_argument("--phase-timeout", type=float, default=600, help="seconds before a phase is abandoned")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--keep-logs", action="store_true",
                        help="copy each API log to bench/results/ (always done when something failed)")
    args = parser.parse_args(argv)
    for name in ("concurrency", "requests", "customers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup is not None and args.warmup < 0:
        parser.error("--warmup must not be negative")
    args.resources = args.resources or args.concurrency
    if args.url and not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        parser.error("--url must be a loopback address (http://127.0.0.1:PORT)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_sigterm()
    started = time.monotonic()
    texts: list[str] = []
    records: list[dict] = []
    all_ok = True
    idle_load = busy_cores(1.0)
    print(f"bench/bookings.py: concurrency {args.concurrency}, {args.requests} requests per phase, "
          f"{os.cpu_count()} cores; before starting, the machine was busy {idle_load:.2f} of "
          f"{os.cpu_count()} cores", flush=True)
    if idle_load > 0.2:
        print("!! other processes are using the CPU: the figures below will be lower and noisier than on a "
              "quiet machine (see the `other CPU s` column)", flush=True)
    if args.url:
        pids = Pids(args.server_pid, measure_postgres=bool(postgres_cpu_by_pid()))
        fixture, results = asyncio.run(measure(args.url.rstrip("/"), args, pids))
        texts.append(report(f"external server at {args.url}", args, fixture, results, args.server_pid, None))
        all_ok = all(r.ok == r.requests for r in results)
        records.append({"engine": "external", "url": args.url, "phases": [r.as_dict() for r in results]})
    else:
        engines = ["sqlite", "postgres"] if args.engine == "both" else [args.engine]
        if "postgres" in engines and not postgres_reachable(args.postgres_url):
            if args.engine == "postgres":
                print(f"PostgreSQL is not reachable at {args.postgres_url}", file=sys.stderr)
                return 2
            print(f"!! PostgreSQL is not reachable at {args.postgres_url}: skipping it", file=sys.stderr)
            engines.remove("postgres")
        workdir = Path(tempfile.mkdtemp(prefix="bookwire-bench-"))
        redis = EmbeddedRedis(workdir / "redis", persist=False)
        try:
            redis_url = redis.start()
            for engine in engines:
                text, ok, record = bench_engine(engine, args, redis_url, workdir)
                print(text + "\n", flush=True)
                texts.append(text)
                records.append(record)
                all_ok = all_ok and ok
        finally:
            redis.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    if args.url:
        print(texts[0])
    if len(records) > 1:
        print("== summary (req/s, p99 ms) ==")
        for record in records:
            cells = [f"{p['phase']}: {p['requests_per_second']} req/s, p99 {p['p99_ms']} ms"
                     for p in record["phases"] if not p["phase"].startswith("warm-up")]
            print(f"{record['engine']:<8} " + " | ".join(cells))
    verdict = "all requests succeeded" if all_ok else "FAILURES, see above"
    print(f"\ntotal time {time.monotonic() - started:.0f} s; {verdict}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"concurrency": args.concurrency, "requests": args.requests,
                                         "cores": os.cpu_count(), "engines": records}, indent=2))
    return 0 if all_ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the finally blocks have already cleaned up
        print("\ninterrupted; the server, Redis and the scratch database were stopped/removed", file=sys.stderr)
        sys.exit(130)
