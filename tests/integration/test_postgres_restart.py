"""PostgreSQL restarted under load — a private cluster the test starts (never the machine's own):
while it is down the API answers 503 with `Retry-After`, never 500, and it recovers by itself;
every booking that answered 201 exists once and has its `booking.created` event once (its side
effects were committed with it, in its outbox), and a client that retries with its
`Idempotency-Key` after a failed answer gets the booking that committed, never a second one.

It has a Redis of its own, so the event history it reads holds only its own events. Skipped where
there is no PostgreSQL server binary (`initdb`, `pg_ctl`) to start a cluster with.
"""

from __future__ import annotations

import asyncio
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from conftest import Actor, Server, at, make_resource, register, running_api, sign_in_admin
from events import outbox_settled
from test_events_faults import private_redis

from app.embedded_redis import free_port

PG_BIN = next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)), "")
OUTAGE_SECONDS = 2.0
BURST = 60  # keyed creates, one every 50 ms, across the restart


class PrivateCluster:
    """A PostgreSQL cluster in a temporary folder on a free port, run as the `postgres` user when
    the tests run as root (the server refuses to run as root)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, f"{args[0]} failed: {done.stdout}\n{done.stderr}"

    def init(self) -> None:
        self.data_dir.mkdir(parents=True)
        if self.as_user:
            for path in (self.data_dir.parent, self.data_dir):
                shutil.chown(path, "postgres", "postgres")
        self._run(f"{PG_BIN}/initdb", "-D", str(self.data_dir), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        self._run(f"{PG_BIN}/pg_ctl", "-D", str(self.data_dir), "-w", "-l", str(self.data_dir / "server.log"),
                  "-o", f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(f"{PG_BIN}/pg_ctl", "-D", str(self.data_dir), "-w", "-m", mode, "stop")


@contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    """A cluster in a folder of its own under the system's temporary folder (pytest's are private to
    root, where the `postgres` user could not reach them); stopped and removed on exit."""
    if not PG_BIN or (os.geteuid() == 0 and shutil.which("runuser") is None):
        pytest.skip("no PostgreSQL server binaries to start a private cluster with")
    folder = Path(tempfile.mkdtemp(prefix="bookwire-pg-"))
    cluster = PrivateCluster(folder / "data")
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        subprocess.run([*cluster.as_user, f"{PG_BIN}/pg_ctl", "-D", str(cluster.data_dir), "-m", "immediate",
                        "stop"], capture_output=True, timeout=60, check=False)
        shutil.rmtree(folder, ignore_errors=True)


async def _burst(base_url: str, customer: Actor, resource_id: str, cluster: PrivateCluster) -> dict[str, list[int]]:
    """BURST keyed creates one every 50 ms, PostgreSQL stopped (immediate) at the 20th for
    OUTAGE_SECONDS; each request that does not answer 201 is retried with its key until it does."""
    answers: dict[str, list[int]] = {}

    async def create(client: httpx.AsyncClient, i: int) -> None:
        key = f"burst-{i}"
        body = {"resource_id": resource_id, "starts_at": at(24 + i), "ends_at": at(24 + i, 30)}
        statuses = answers.setdefault(key, [])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            answer = await client.post("/v1/bookings", json=body, headers={"Idempotency-Key": key})
            statuses.append(answer.status_code)
            if answer.status_code == 201:
                return
            assert answer.status_code == 503, answer.text  # down: a problem document, never a 500
            assert int(answer.headers["Retry-After"]) > 0
            await asyncio.sleep(0.2)

    async def outage() -> None:
        await asyncio.sleep(20 * 0.05)
        await asyncio.to_thread(cluster.stop, "immediate")
        await asyncio.sleep(OUTAGE_SECONDS)
        await asyncio.to_thread(cluster.start)

    async with httpx.AsyncClient(base_url=base_url, timeout=30,
                                 headers={"Authorization": f"Bearer {customer.token}"}) as client:
        tasks = [asyncio.create_task(outage())]
        for i in range(BURST):
            tasks.append(asyncio.create_task(create(client, i)))
            await asyncio.sleep(0.05)
        await asyncio.gather(*tasks)
    return answers


def test_postgresql_restarted_under_load(tmp_path: Path) -> None:
    (tmp_path / "api").mkdir()
    with private_cluster() as cluster, private_redis(tmp_path / "redis") as redis_server, \
            running_api(tmp_path / "api", redis_server.url, cluster.url) as (url, process), \
            httpx.Client(base_url=url, timeout=30) as http:
        server = Server("postgres", url, cluster.url, tmp_path / "api")
        customer, owner, admin = register(server, "customer"), register(server, "provider"), sign_in_admin(server)
        resource = make_resource(owner, capacity=1)
        answers = asyncio.run(_burst(url, customer, resource["id"], cluster))
        assert process.poll() is None, "the API process died"

        assert all(statuses[-1] == 201 for statuses in answers.values()), answers
        refused = sum(1 for statuses in answers.values() for s in statuses if s == 503)
        assert refused > 0, "no request met the outage: the test proved nothing"
        # Every key made exactly one booking, whatever its first answers were.
        outbox_settled(http)
        bookings = admin.http.get("/v1/bookings", params={"resource_id": resource["id"], "limit": 100}).json()
        assert len(bookings["items"]) == BURST, f"{len(bookings['items'])} bookings for {BURST} keys"
        # ... and each its one booking.created, from the outbox, once the database and Redis agree.
        history = admin.http.get("/v1/events/poll", params={"cursor": "0-0", "timeout": 0}).json()["events"]
        created = Counter(e["data"]["id"] for e in history
                          if e["type"] == "booking.created" and e["data"]["resource_id"] == resource["id"])
        assert sorted(created) == sorted(b["id"] for b in bookings["items"]), created
        assert set(created.values()) == {1}, created
        print(f"\n[postgres restart] {BURST} keyed creates, {refused} answers 503 during the outage, "
              f"{BURST} bookings, each announced once")
