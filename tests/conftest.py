"""Shared fixtures: a private Redis, a live Bookwire API on SQLite and on PostgreSQL, and users.

Every integration test talks HTTP to a real `bookwire api` process (uvicorn) backed by a real
Redis and a real database. The `server` fixture is parametrised over the databases, so each test
that uses it runs once per engine; PostgreSQL runs where it is reachable (`TEST_POSTGRES_URL`,
default the local server) and is skipped otherwise.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from app.embedded_redis import EmbeddedRedis, free_port

TEST_JWT_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
ADMIN_EMAIL = "root@bookwire.test"
ADMIN_PASSWORD = "admin-password-1"
POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _postgres_reachable() -> bool:
    async def probe() -> None:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception:
        return False
    return True


def _run_sql(url: str, sql: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a free port, for this test session only."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), persist=False)
    yield server.start()
    server.stop()


def bookwire_env(**overrides: str) -> dict[str, str]:
    """The environment of a Bookwire process in tests (inherits PATH and friends)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "JWT_", "ADMIN_"))}
    # The suite registers hundreds of users from 127.0.0.1, and the cast's users open many streams
    # over a session: only the tests of these limits set real ones, on APIs of their own.
    env.update(JWT_SECRET=TEST_JWT_SECRET, ADMIN_EMAIL=ADMIN_EMAIL, ADMIN_PASSWORD=ADMIN_PASSWORD,
               AUTH_RATE_LIMIT="1000000/1m", MAX_STREAMS_PER_USER="1000")
    env.update(overrides)
    return env


def wait_for_http(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def bookwire(*args: str, env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "app.cli", *args], env=env, stdout=out, stderr=out)


@pytest.fixture(scope="session")
def scheduler_process(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One rq-scheduler on the private Redis, so /ready can see it."""
    data = tmp_path_factory.mktemp("scheduler")
    process = bookwire("scheduler", env=bookwire_env(REDIS_URL=redis_url, DATA_DIR=str(data)),
                       log=data / "scheduler.log")
    yield
    process.terminate()
    process.wait(timeout=10)


@dataclass
class Server:
    """A running API: where it is, which database it uses, and how to reach it."""

    engine: str
    base_url: str
    database_url: str
    data_dir: Path
    users: dict[str, Any] = field(default_factory=dict)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30)


@contextmanager
def fresh_database(engine: str, data_dir: Path) -> Iterator[str]:
    """The DATABASE_URL of a new, empty database on `engine` ("sqlite" or "postgres"), dropped
    afterwards; a PostgreSQL that is not reachable skips the test (fails it under CI)."""
    if engine == "sqlite":
        yield f"sqlite:///{data_dir / 'bookwire.sqlite3'}"
        return
    if not _postgres_reachable():
        if os.environ.get("BOOKWIRE_TEST_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"BOOKWIRE_TEST_REQUIRE_POSTGRES=1 but PostgreSQL is not reachable at {POSTGRES_URL}")
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_URL}")
    name = f"bookwire_test_{uuid.uuid4().hex[:12]}"
    _run_sql(POSTGRES_URL, f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        _run_sql(POSTGRES_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def running_api(data_dir: Path, redis_url: str, database_url: str | None = None, migrate: bool = True,
                **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A `bookwire api` process with extra settings (e.g. SSE_HEARTBEAT_SECONDS="1"); yields its URL.

    Its log is `data_dir/api.log`. Two of these on one `database_url` and `redis_url` act as two
    processes behind a load balancer."""
    port = free_port()
    database_url = database_url or f"sqlite:///{data_dir / 'bookwire.sqlite3'}"
    full_env = bookwire_env(DATABASE_URL=database_url, REDIS_URL=redis_url, DATA_DIR=str(data_dir),
                            PORT=str(port), **env)
    log = data_dir / "api.log"
    if migrate:
        assert bookwire("migrate", env=full_env, log=log).wait(timeout=120) == 0, log.read_text()
    process = bookwire("api", env=full_env, log=log)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", process)
        yield f"http://127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def server(
    request: pytest.FixtureRequest, redis_url: str, scheduler_process: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:
    """A live `bookwire api` (after `bookwire migrate`) on the parametrised database."""
    engine: str = request.param
    data_dir = tmp_path_factory.mktemp(f"api-{engine}")
    with fresh_database(engine, data_dir) as database_url, running_api(data_dir, redis_url, database_url) as (url, _):
        yield Server(engine, url, database_url, data_dir)


@dataclass
class Actor:
    """A signed-in user in a test."""

    id: str
    role: str
    email: str
    token: str
    http: httpx.Client


def register(server: Server, role: str, name: str = "Test User") -> Actor:
    email = f"{role}-{uuid.uuid4().hex[:10]}@example.test"
    with server.client() as client:
        answer = client.post("/v1/auth/register",
                             json={"email": email, "password": "password-123", "name": name, "role": role})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    return Actor(body["user"]["id"], role, email, body["access_token"], server.client(body["access_token"]))


def sign_in_admin(server: Server) -> Actor:
    with server.client() as client:
        answer = client.post("/v1/auth/token", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    assert answer.status_code == 200, answer.text
    token = answer.json()["access_token"]
    me = server.client(token).get("/v1/me").json()
    return Actor(me["id"], "admin", ADMIN_EMAIL, token, server.client(token))


@dataclass
class Cast:
    """The people of a booking story: two customers, two providers, an admin."""

    customer: Actor
    other_customer: Actor
    owner: Actor
    other_provider: Actor
    admin: Actor


@pytest.fixture(scope="session")
def cast_by_engine() -> dict[str, Cast]:
    return {}


@pytest.fixture
def cast(server: Server, cast_by_engine: dict[str, Cast]) -> Cast:
    """The same five users for every test on one server (registering costs an argon2 hash)."""
    if server.engine not in cast_by_engine:
        cast_by_engine[server.engine] = Cast(
            customer=register(server, "customer", "Carol Customer"),
            other_customer=register(server, "customer", "Oscar Other"),
            owner=register(server, "provider", "Paula Provider"),
            other_provider=register(server, "provider", "Pete Rival"),
            admin=sign_in_admin(server),
        )
    return cast_by_engine[server.engine]


# One anchor for the whole run: `at(12)` must name the same instant in a request and in the assertion
# that checks it, even when the minute turns between the two.
_ANCHOR = datetime.now(UTC).replace(second=0, microsecond=0)


def at(hours: float, minutes: float = 0) -> str:
    """An RFC 3339 time `hours` after the test run started, on a whole minute (tests book the future)."""
    return (_ANCHOR + timedelta(hours=hours, minutes=minutes)).isoformat()


def make_resource(owner: Actor, **fields: Any) -> dict[str, Any]:
    body = {"name": "Room A", "kind": "room", "capacity": 1, "requires_confirmation": True, **fields}
    answer = owner.http.post("/v1/resources", json=body)
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result


def make_booking(customer: Actor, resource_id: str, start_hours: float = 24, length_hours: float = 1,
                 **fields: Any) -> dict[str, Any]:
    body = {"resource_id": resource_id, "starts_at": at(start_hours), "ends_at": at(start_hours + length_hours),
            **fields}
    answer = customer.http.post("/v1/bookings", json=body)
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result


def assert_problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    """The answer is an RFC 9457 problem document with this status."""
    assert answer.status_code == status, f"{answer.status_code} {answer.text}"
    assert answer.headers["content-type"].startswith("application/problem+json"), answer.headers
    body: dict[str, Any] = answer.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"], body
    return body


def execute_sql(database_url: str, sql: str, *params: Any) -> None:
    """Run one statement straight on a test database (SQLite or PostgreSQL), for rows the API would
    refuse to make today (data from before a rule existed). Placeholders are `$1`, `$2`, …"""
    if database_url.startswith("sqlite:///"):
        import re
        import sqlite3

        connection = sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=30)
        try:
            connection.execute(re.sub(r"\$\d+", "?", sql), params)
            connection.commit()
        finally:
            connection.close()
        return

    async def run() -> None:
        conn = await asyncpg.connect(database_url, timeout=5)
        try:
            await conn.execute(sql, *params)
        finally:
            await conn.close()

    asyncio.run(run())
