"""Redis behind Sentinel, with real processes (SPEC "Operations": after a Sentinel failover the API,
workers and scheduler carry on by themselves, and nothing committed is lost).

On loopback: a primary, two replicas and three sentinels (quorum 2, down-after 1 s), then `bookwire
api`, a `bookwire worker` and a `bookwire scheduler` with `REDIS_URL=redis+sentinel://...`. The
customer and the owner follow their events over SSE while bookings are made, confirmed and cancelled
in a loop, and the primary is replaced twice under that traffic:
1. `SENTINEL FAILOVER` (a replica is promoted; the sentinels demote the old primary ~10 s later);
2. the new primary SIGKILLed, so the sentinels must notice it is down and promote the other replica.
Then: every booking's versions (1..version, read back from the API) reached each follower once and
in order; no request answered 500 (a 503 for a moment is allowed); a booking with a 3 s response
deadline, made after the second failover, expires (the scheduler and the worker still run jobs);
and no Bookwire process was restarted (each still runs with the pid it started with).
Every wait is bounded; every server is stopped in `finally` blocks.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Actor, at, make_resource, register, sign_in_admin
from redis import Redis
from test_outbox_faults import SseFollower, booking_problems, until
from test_reminders import Stack, bookwire_stack, eventually, log_tail

from app.embedded_redis import free_port

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not on PATH")

SERVICE = "bookwire"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 2000  # a sentinel tries the same master again after twice this


class SentinelGroup:
    """A primary, two replicas and three sentinels watching them, on free loopback ports."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.servers: dict[int, subprocess.Popen[bytes]] = {}
        self.sentinels: list[int] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        log = open(folder / "log", "ab")
        process = subprocess.Popen(["redis-server", *args], cwd=folder, stdout=log, stderr=log)
        self.processes.append(process)
        return process

    def _data_node(self, name: str, port: int, *extra: str) -> None:
        self.servers[port] = self._spawn(name, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                         "--appendonly", "no", "--dir", str(self.root / name), *extra)

    def start(self) -> None:
        primary = free_port()
        self._data_node("primary", primary)
        for name in ("replica-1", "replica-2"):  # after the first failover, one is left to promote
            replica = free_port()
            self._data_node(name, replica, "--replicaof", "127.0.0.1", str(primary))
            eventually(lambda port=replica: self.info(port).get("master_link_status") == "up", 10, f"{name} in sync")
        for number in range(3):
            port = free_port()
            conf = self.root / f"sentinel-{number}" / "sentinel.conf"
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {conf.parent}\n"
                            f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 2\n"
                            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n")
            self._spawn(f"sentinel-{number}", str(conf), "--sentinel")
            self.sentinels.append(port)
        eventually(self.settled, 15, "three sentinels that know each other and the replica", self.explain)

    @property
    def url(self) -> str:
        return f"redis+sentinel://{','.join(f'127.0.0.1:{p}' for p in self.sentinels)}/{SERVICE}"

    def sentinel(self, port: int) -> Redis:
        return Redis(port=port, socket_timeout=2, decode_responses=True)

    def info(self, port: int) -> dict[str, Any]:
        client = Redis(port=port, socket_timeout=2, socket_connect_timeout=1)
        try:
            result: dict[str, Any] = client.info("replication")
            return result
        except Exception:
            return {}
        finally:
            client.close()

    def primary(self) -> int:
        """The primary's port, as the first sentinel says."""
        with self.sentinel(self.sentinels[0]) as client:
            address: Any = client.sentinel_get_master_addr_by_name(SERVICE)
        return int(address[1])

    def settled(self) -> bool:
        """Every sentinel sees the same primary up, the two others, and a healthy replica."""
        primary = self.primary()
        for port in self.sentinels:
            with self.sentinel(port) as client:
                master: Any = client.sentinel_master(SERVICE)
                replicas: Any = client.sentinel_slaves(SERVICE)
            if master["port"] != primary or master["is_sdown"] or master["num-other-sentinels"] < 2:
                return False
            if not any(r["master-link-status"] == "ok" and not r["is_sdown"] for r in replicas):
                return False
        return True

    def explain(self) -> str:
        return "\n".join(log_tail(p / "log", 15) for p in sorted(self.root.iterdir()) if (p / "log").exists())

    def wait_for_new_primary(self, old: int, timeout: float) -> float:
        """Wait until every sentinel names another primary that answers as one; the seconds it took."""
        started = time.monotonic()

        def moved() -> bool:
            try:
                new = self.primary()
                return new != old and self.info(new).get("role") == "master"
            except Exception:
                return False

        eventually(moved, timeout, "a new primary", self.explain)
        return time.monotonic() - started

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=5)


@contextmanager
def sentinel_group(root: Path) -> Iterator[SentinelGroup]:
    group = SentinelGroup(root)
    try:
        group.start()
        yield group
    finally:
        group.stop()


class Traffic:
    """Bookings made, confirmed and cancelled in a loop (and the event history read), counting every
    answer's status; a 500 (or any 5xx but a 503) is a failure."""

    def __init__(self, base_url: str, customer: Actor, owner: Actor, resource_id: str) -> None:
        self.customer = httpx.AsyncClient(base_url=base_url, timeout=20,
                                          headers={"Authorization": f"Bearer {customer.token}"})
        self.owner = httpx.AsyncClient(base_url=base_url, timeout=20,
                                       headers={"Authorization": f"Bearer {owner.token}"})
        self.resource_id = resource_id
        self.statuses: Counter[int | str] = Counter()
        self.bad: list[str] = []
        self.bookings: set[str] = set()
        self._next_hour = 100

    async def _send(self, client: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        try:
            answer = await client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            self.statuses[type(exc).__name__] += 1
            self.bad.append(f"{method} {path}: {exc!r}")
            return None
        self.statuses[answer.status_code] += 1
        if answer.status_code >= 500 and answer.status_code != 503:
            self.bad.append(f"{method} {path}: {answer.status_code} {answer.text[:300]}")
        return answer

    async def one_round(self) -> None:
        self._next_hour += 2
        body = {"resource_id": self.resource_id, "starts_at": at(self._next_hour), "ends_at": at(self._next_hour + 1)}
        made = await self._send(self.customer, "POST", "/v1/bookings", json=body)
        if made is None or made.status_code != 201:
            return
        booking_id = made.json()["id"]
        self.bookings.add(booking_id)
        await self._send(self.owner, "POST", f"/v1/bookings/{booking_id}/confirm", json={})
        if self._next_hour % 3 == 0:
            await self._send(self.customer, "POST", f"/v1/bookings/{booking_id}/cancel", json={})
        await self._send(self.customer, "GET", "/v1/events/poll", params={"timeout": "0"})  # reads Redis

    async def run_until(self, done: asyncio.Event) -> None:
        while not done.is_set():
            await self.one_round()

    async def expected(self) -> dict[tuple[str, int], str | None]:
        """Every (booking, version) the database holds for the bookings made: each must have one event."""
        expected: dict[tuple[str, int], str | None] = {}
        for booking_id in self.bookings:
            answer = await self.customer.get(f"/v1/bookings/{booking_id}")
            assert answer.status_code == 200, answer.text
            for version in range(1, answer.json()["version"] + 1):
                expected[(booking_id, version)] = None
        return expected

    async def close(self) -> None:
        await self.customer.aclose()
        await self.owner.aclose()


def bookwire_processes(redis_url: str) -> set[tuple[int, str]]:
    """This test's Bookwire processes: (pid, command line) of the children of this process that use
    `redis_url` (a suite's other APIs, started by session fixtures, are children too)."""
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(os.getpid())], capture_output=True, text=True,
                         check=True).stdout
    rows = (line.strip().partition(" ") for line in out.splitlines())
    wanted = f"REDIS_URL={redis_url}".encode()
    return {(int(pid), args) for pid, _, args in rows
            if "app.cli" in args and wanted in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")}


def test_failovers_under_traffic_lose_nothing_and_need_no_restart(tmp_path: Path) -> None:
    started = time.monotonic()
    with sentinel_group(tmp_path / "redis") as group, \
            bookwire_stack(tmp_path / "app", group.url, workers=1, schedulers=1, SWEEP_INTERVAL="2s") as stack:
        asyncio.run(_scenario(group, stack, started))


async def _scenario(group: SentinelGroup, stack: Stack, started: float) -> None:
    server = stack.server
    customer, owner = register(server, "customer"), register(server, "provider")
    sign_in_admin(server)  # the admin exists: the stack started against the sentinels
    resource = make_resource(owner, name="Studio", capacity=1)
    followers = [SseFollower(server, customer, "customer"), SseFollower(server, owner, "owner")]
    for follower in followers:
        await follower.start()
    traffic = Traffic(stack.base_url, customer, owner, resource["id"])
    before = bookwire_processes(group.url)
    assert len(before) == 3, before  # the API, the worker, the scheduler
    done = asyncio.Event()
    loop = asyncio.create_task(traffic.run_until(done))
    try:
        await asyncio.sleep(2)
        first = group.primary()
        with group.sentinel(group.sentinels[0]) as client:
            client.execute_command("SENTINEL", "FAILOVER", SERVICE)
        forced = await asyncio.to_thread(group.wait_for_new_primary, first, 15)
        # The other replica follows the new primary; the sentinels must see it healthy to promote it.
        await asyncio.to_thread(eventually, group.settled, 20, "a healthy replica of the new primary",
                                group.explain)
        await asyncio.sleep(1)
        second = group.primary()
        group.servers[second].send_signal(signal.SIGKILL)
        killed = await asyncio.to_thread(group.wait_for_new_primary, second, 20)
        await asyncio.sleep(2)  # traffic on the promoted server
    finally:
        done.set()
        await asyncio.wait_for(loop, 30)
    print(f"\n[sentinel] forced failover seen after {forced:.1f} s, SIGKILLed primary replaced after "
          f"{killed:.1f} s; {len(traffic.bookings)} bookings, answers {dict(traffic.statuses)}")
    try:
        assert not traffic.bad, f"requests that failed (not a 503): {traffic.bad[:10]}\n{stack.explain()}"
        # Jobs still run: a pending booking whose 3 s response deadline passes expires.
        hurried = make_resource(owner, name="Booth", capacity=1, response_deadline_seconds=3)
        body = {"resource_id": hurried["id"], "starts_at": at(5000), "ends_at": at(5001)}
        pending = customer.http.post("/v1/bookings", json=body)
        assert pending.status_code == 201, pending.text
        booking_id = pending.json()["id"]
        traffic.bookings.add(booking_id)
        await asyncio.to_thread(
            eventually, lambda: customer.http.get(f"/v1/bookings/{booking_id}").json()["status"] == "expired",
            15, "the booking with a 3 s deadline expired", stack.explain)
        expected = await traffic.expected()
        await until(lambda: all(set(expected) <= f.booking_versions() for f in followers), 15,
                    "every booking version on both streams", stack.explain)
        await asyncio.sleep(1)  # anything delivered twice would come now
        problems = [p for f in followers for p in booking_problems(f.label, f.arrivals, expected, traffic.bookings)]
        assert not problems, "\n".join(problems) + "\n" + stack.explain()
        assert all(f.error is None for f in followers), [f.error for f in followers]
        after = bookwire_processes(group.url)
        assert after == before, f"a Bookwire process was restarted or died: {before} -> {after}"
        print(f"[sentinel] {len(expected)} booking versions each reached both followers once; "
              f"test took {time.monotonic() - started:.1f} s")
    finally:
        for follower in followers:
            await follower.stop()
        await traffic.close()
