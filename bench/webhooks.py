"""Webhook deliveries: how many per second one worker's dispatcher sends to a local receiver, and
commit → webhook latency (issue 11; targets ≥ 500 deliveries/s, p99 ≤ 200 ms).

    .venv/bin/python bench/webhooks.py [--engine sqlite|postgres] [--backlog 5000] [--webhooks 1,10]
                                       [--bookings 400] [--rate 40]

One `bookwire api` (a scratch database, a private Redis, WEBHOOK_ALLOW_PRIVATE=1) and, per phase,
one `bookwire worker` (which starts the webhook dispatcher beside itself). The receiver is this
process: a raw asyncio HTTP/1.1 server on loopback that answers 204 at once and notes the arrival
time of each delivery (`time.time_ns()`, comparable with times written by the API on this machine).

- throughput: with no worker running, `--backlog` custom events are published (`POST /v1/events`
  as an admin, each recorded as one delivery per webhook); then a worker starts, and the time from
  its first delivery to the last is measured. Per webhook count in `--webhooks` (1: one webhook
  sends in order, one request at a time; 10: ten webhooks in parallel, the backlog split among
  them by event type).
- latency: with a worker running, `--bookings` bookings are made at `--rate` per second; each
  `booking.created` delivery's arrival minus the booking's `created_at` (set in the committing
  transaction) is the commit → webhook latency.
CPU of the dispatcher process (utime+stime from /proc) is reported per delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import POSTGRES_URL, api_server, bookwire, fmt, percentile, postgres_reachable, table
from procs import cpu_seconds, interrupt_on_sigterm, stop_process, tail
from rawhttp import RequestPool, http_request, uvloop_run

from app.embedded_redis import EmbeddedRedis

ADMIN_EMAIL, ADMIN_PASSWORD = "bench-admin@example.test", "bench-admin-password"


class Receiver(asyncio.Protocol):
    """One keep-alive connection of the receiver: parses requests by Content-Length, answers 204."""

    arrivals: list[tuple[int, bytes]] = []  # (time_ns, body), shared by every connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].lower()
            start = head.find(b"content-length:")
            length = int(head[start + 15:head.find(b"\r\n", start) if head.find(b"\r\n", start) > 0 else None])
            if len(self.buffer) < head_end + 4 + length:
                return
            body = self.buffer[head_end + 4:head_end + 4 + length]
            self.buffer = self.buffer[head_end + 4 + length:]
            Receiver.arrivals.append((now, body))
            self.transport.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return bookwire("worker", env=env, log=log)


def dispatcher_pid(worker: subprocess.Popen[bytes]) -> int | None:
    """The `bookwire webhooks` child of the worker."""
    try:
        children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


async def wait_for(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def run(args: argparse.Namespace, workdir: Path) -> None:
    """The API outside the event loop (its scratch database is made with asyncio.run), then the phases."""
    redis = EmbeddedRedis(workdir / "redis", persist=False)
    redis_url = redis.start()
    (workdir / "api").mkdir()
    try:
        with api_server(args.engine, workdir / "api", redis_url, WEBHOOK_ALLOW_PRIVATE="1",
                        ADMIN_EMAIL=ADMIN_EMAIL, ADMIN_PASSWORD=ADMIN_PASSWORD) as api:
            uvloop_run(phases(args, workdir, api.base_url, api.env))
    finally:
        redis.stop()


async def phases(args: argparse.Namespace, workdir: Path, base_url: str, env: dict[str, str]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Receiver, "127.0.0.1", 0)
    receiver_port = server.sockets[0].getsockname()[1]
    try:
        port = int(base_url.rsplit(":", 1)[1])
        pool = RequestPool(port, max_connections=16)

        async def call(method: str, path: str, token: str | None, body: object = None) -> dict:  # type: ignore[type-arg]
            answer = await pool.request(http_request(method, path, port, token, json.dumps(body).encode()
                                                     if body is not None else None))
            if answer.status >= 300:
                raise RuntimeError(f"{method} {path}: {answer.status} {answer.body[:300]!r}")
            return json.loads(answer.body) if answer.body else {}

        admin = (await call("POST", "/v1/auth/token", None, {"email": ADMIN_EMAIL,
                                                            "password": ADMIN_PASSWORD}))["access_token"]
        rows = []
        for hooks in args.webhooks:
            rows.append(await throughput(args, env, workdir, call, admin, receiver_port, hooks))
        print(table(["webhooks", "deliveries", "seconds", "deliveries/s", "dispatcher CPU ms/delivery"], rows))
        await latency(args, env, workdir, call, admin, receiver_port)
        pool.close()
    finally:
        server.close()


async def throughput(args, env, workdir, call, admin, receiver_port, hooks):  # type: ignore[no-untyped-def]
    made = [await call("POST", "/v1/webhooks", admin, {"url": f"http://127.0.0.1:{receiver_port}/t{hooks}-{n}",
                                                       "event_types": [f"bench.t{hooks}_{n}"]})
            for n in range(hooks)]
    sem = asyncio.Semaphore(16)

    async def publish(n: int) -> None:
        async with sem:
            await call("POST", "/v1/events", admin, {"type": f"bench.t{hooks}_{n % hooks}", "channels": ["broadcast"],
                                                     "data": {"n": n}})

    await asyncio.gather(*(publish(n) for n in range(args.backlog)))
    Receiver.arrivals = []
    worker = start_worker(env, workdir / f"worker-{hooks}.log")
    try:
        await wait_for(lambda: len(Receiver.arrivals) >= 1, 60, "the first delivery")
        child = dispatcher_pid(worker)
        cpu_start, counted_from = (cpu_seconds(child) if child else None), len(Receiver.arrivals)
        await wait_for(lambda: len(Receiver.arrivals) >= args.backlog, 600, f"{args.backlog} deliveries")
        cpu_end = cpu_seconds(child) if child else None
        cpu = (cpu_end - cpu_start) / (args.backlog - counted_from) if cpu_start is not None and cpu_end is not None \
            and args.backlog > counted_from else None
    except Exception:
        print(tail(workdir / f"worker-{hooks}.log"))
        raise
    finally:
        stop_process(worker)
    first, last = Receiver.arrivals[0][0], Receiver.arrivals[args.backlog - 1][0]
    seconds = (last - first) / 1e9
    for hook in made:
        await call("DELETE", f"/v1/webhooks/{hook['id']}", admin)
    return [str(hooks), str(args.backlog), fmt(seconds, 2), fmt(args.backlog / seconds, 0),
            fmt(cpu * 1000, 3) if cpu else "-"]


async def latency(args, env, workdir, call, admin, receiver_port):  # type: ignore[no-untyped-def]
    hook = await call("POST", "/v1/webhooks", admin, {"url": f"http://127.0.0.1:{receiver_port}/latency",
                                                      "event_types": ["booking.created"]})
    email = f"bench-provider-{time.time_ns()}@example.test"
    provider = (await call("POST", "/v1/auth/register", None, {"email": email, "password": ADMIN_PASSWORD,
                                                               "name": "P", "role": "provider"}))["access_token"]
    customer = (await call("POST", "/v1/auth/register", None, {"email": "c" + email, "password": ADMIN_PASSWORD,
                                                               "name": "C", "role": "customer"}))["access_token"]
    room = await call("POST", "/v1/resources", provider, {"name": "Hall", "capacity": 10000,
                                                          "requires_confirmation": False})
    Receiver.arrivals = []
    worker = start_worker(env, workdir / "worker-latency.log")
    try:
        await asyncio.sleep(3)  # the worker and its dispatcher are up
        tomorrow = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
        slot = (tomorrow.isoformat(), (tomorrow + timedelta(hours=1)).isoformat())
        start = time.monotonic()
        tasks = []
        for n in range(args.bookings):
            await asyncio.sleep(max(0.0, start + n / args.rate - time.monotonic()))
            tasks.append(asyncio.create_task(call("POST", "/v1/bookings", customer, {
                "resource_id": room["id"], "starts_at": slot[0], "ends_at": slot[1]})))
        await asyncio.gather(*tasks)
        await wait_for(lambda: len(Receiver.arrivals) >= args.bookings, 60, "the bookings' deliveries")
    finally:
        stop_process(worker)
    latencies = []
    for arrived, body in Receiver.arrivals:
        created = datetime.fromisoformat(json.loads(body)["data"]["created_at"]).timestamp()
        latencies.append(arrived / 1e6 - created * 1000)
    latencies.sort()
    print(f"commit → webhook, {args.bookings} bookings at {args.rate}/s:")
    print(table(["p50 ms", "p90 ms", "p99 ms", "max ms"], [[fmt(percentile(latencies, 0.5)),
                fmt(percentile(latencies, 0.9)), fmt(percentile(latencies, 0.99)), fmt(latencies[-1])]]))
    await call("DELETE", f"/v1/webhooks/{hook['id']}", admin)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--backlog", type=int, default=5000)
    parser.add_argument("--webhooks", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10])
    parser.add_argument("--bookings", type=int, default=400)
    parser.add_argument("--rate", type=float, default=40.0)
    args = parser.parse_args()
    if args.engine == "postgres" and not postgres_reachable(POSTGRES_URL):
        print("PostgreSQL is not reachable (BENCH_POSTGRES_URL)", file=sys.stderr)
        return 2
    interrupt_on_sigterm()
    print(f"engine {args.engine}; {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as workdir:
        run(args, Path(workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
