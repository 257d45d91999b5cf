"""What the benchmarks share to stand up a Bookwire: a scratch database, `bookwire migrate`, one
`bookwire api` process, and the users and resources a scenario starts from.

Every process runs from the repository this file lives in (`REPO`), so a benchmark started from a
`git archive` of another commit measures that commit's `app/`, not the working tree's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
from procs import die_with_parent, stop_process, tail

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # this tree's `app`, also when run from a `git archive` elsewhere

from app.embedded_redis import free_port  # noqa: E402

POSTGRES_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PASSWORD = "bench-password-123"
SERVER_START_TIMEOUT = 60.0     # seconds until /health answers
TOKEN_TTL = 6 * 3600            # life of the access tokens `mint_tokens` makes (the API accepts up to 24 h)
MIGRATE_TIMEOUT = 180.0


# --------------------------------------------------------------------------------------------------
# Processes


def bookwire_env(**overrides: str) -> dict[str, str]:
    """This environment without the caller's Bookwire settings, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "JWT_", "ADMIN_"))}
    env.update(overrides)
    return env


def bookwire(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start `python -m app.cli <args>` from `REPO` (so that it runs that tree's `app/`), output to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "app.cli", *args], env=env, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)


def wait_for_health(base_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Wait until `/health` answers 200; raise with the log's tail if the process exits or it takes too long."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bookwire api exited with {process.returncode}:\n{tail(log)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"bookwire api did not answer /health within {SERVER_START_TIMEOUT} s:\n{tail(log)}")


def server_log_problems(path: Path) -> tuple[int, int, str]:
    """Tracebacks and ERROR/WARNING lines in the API log, and the first traceback's text."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return 0, 0, ""
    lines = text.splitlines()
    tracebacks = sum(1 for line in lines if line.startswith("Traceback"))
    errors = sum(1 for line in lines if line.startswith(("ERROR", "WARNING")) or " ERROR " in line
                 or " WARNING " in line)
    first = ""
    if tracebacks:
        start = next(i for i, line in enumerate(lines) if line.startswith("Traceback"))
        first = "\n".join(lines[max(0, start - 2):start + 40])
    return tracebacks, errors, first


def keep_log(log: Path, name: str) -> Path:
    """Copy a log to `bench/results/` (git-ignored) under a dated name; returns the copy's path."""
    kept = REPO / "bench" / "results" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(log, kept)
    return kept


# --------------------------------------------------------------------------------------------------
# Databases


def run_sql(url: str, sql: str) -> None:
    """Run one statement on PostgreSQL (outside any transaction: CREATE/DROP DATABASE)."""
    async def run() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def postgres_reachable(url: str) -> bool:
    """Whether the PostgreSQL server at `url` answers."""
    try:
        run_sql(url, "SELECT 1")
    except Exception:
        return False
    return True


@contextlib.contextmanager
def scratch_database(engine: str, data_dir: Path, postgres_url: str = POSTGRES_URL) -> Iterator[str]:
    """A fresh, empty database; yields its `DATABASE_URL`. SQLite: a file in `data_dir` (the caller
    removes the folder). PostgreSQL: `bookwire_bench_<hex>` next to `postgres_url`, dropped on exit."""
    if engine == "sqlite":
        yield f"sqlite:///{data_dir / 'bookwire.sqlite3'}"
        return
    name = f"bookwire_bench_{uuid.uuid4().hex[:12]}"
    run_sql(postgres_url, f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url.rsplit("/", 1)[0] + "/" + name
    finally:
        try:
            run_sql(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        except Exception as exc:  # report, but let the caller keep cleaning up the rest
            print(f"!! could not drop database {name}: {exc}", file=sys.stderr)


@dataclass
class ApiServer:
    """One running `bookwire api` process and what it was started with."""

    process: subprocess.Popen[bytes]
    base_url: str
    log: Path
    env: dict[str, str]


@contextlib.contextmanager
def api_server(engine: str, data_dir: Path, redis_url: str, postgres_url: str = POSTGRES_URL,
               **settings: str) -> Iterator[ApiServer]:
    """A scratch database, `bookwire migrate`, then one `bookwire api` process (one uvicorn worker) on
    a free loopback port with a random `JWT_SECRET`; stopped (and the database dropped) on exit.
    `settings` are extra environment variables for both commands."""
    log = data_dir / "api.log"
    with scratch_database(engine, data_dir, postgres_url) as database_url:
        port = free_port()
        env = bookwire_env(DATABASE_URL=database_url, REDIS_URL=redis_url, DATA_DIR=str(data_dir),
                           PORT=str(port), HOST="127.0.0.1", JWT_SECRET=secrets.token_urlsafe(48), **settings)
        migrate = bookwire("migrate", env=env, log=log)
        try:
            code = migrate.wait(timeout=MIGRATE_TIMEOUT)
        finally:
            stop_process(migrate)
        if code != 0:
            raise RuntimeError(f"bookwire migrate exited with {code}:\n{tail(log)}")
        process = bookwire("api", env=env, log=log)
        try:
            base_url = f"http://127.0.0.1:{port}"
            wait_for_health(base_url, process, log)
            yield ApiServer(process, base_url, log, env)
        finally:
            stop_process(process)


# --------------------------------------------------------------------------------------------------
# Users and resources, through the API


@dataclass
class Actor:
    """A registered user: id, role, and the `Authorization` header of its access token."""

    id: str
    role: str
    headers: dict[str, str]

    @property
    def token(self) -> str:
        """The bare access token."""
        return self.headers["Authorization"].removeprefix("Bearer ")


async def register(client: httpx.AsyncClient, role: str, tag: str) -> Actor:
    """Register a new user with a unique e-mail address."""
    email = f"bench-{role}-{tag}-{uuid.uuid4().hex[:10]}@example.test"
    answer = await client.post("/v1/auth/register", json={
        "email": email, "password": PASSWORD, "name": f"Bench {role} {tag}", "role": role})
    if answer.status_code != 201:
        raise RuntimeError(f"register {role}: {answer.status_code} {answer.text[:500]}")
    body = answer.json()
    return Actor(body["user"]["id"], role, {"Authorization": f"Bearer {body['access_token']}"})


async def register_users(client: httpx.AsyncClient, customers: int) -> tuple[Actor, list[Actor]]:
    """One provider and `customers` customers."""
    actors = await asyncio.gather(
        register(client, "provider", "p0"), *(register(client, "customer", f"c{i}") for i in range(customers))
    )
    return actors[0], list(actors[1:])


async def create_resources(client: httpx.AsyncClient, owner: Actor, count: int,
                           requires_confirmation: bool = True) -> list[str]:
    """`count` rooms of capacity 1 owned by `owner`; their ids."""
    async def make_resource(i: int) -> str:
        answer = await client.post("/v1/resources", headers=owner.headers, json={
            "name": f"Bench room {i}", "kind": "room", "capacity": 1,
            "requires_confirmation": requires_confirmation, "price_cents": 1500, "currency": "EUR",
            "timezone": "UTC"})
        if answer.status_code != 201:
            raise RuntimeError(f"create resource: {answer.status_code} {answer.text[:500]}")
        return str(answer.json()["id"])

    return list(await asyncio.gather(*(make_resource(i) for i in range(count))))


# --------------------------------------------------------------------------------------------------
# Many users, fast: straight into the database, tokens minted here


def insert_users(database_url: str, roles: list[str]) -> list[str]:
    """One active user per entry of `roles`, inserted straight into Bookwire's `users` table (as
    Piccolo stores them on that engine); their ids. Registration through the API hashes the password
    with argon2 (a tenth of a second or more of CPU each), far too slow for thousands of users. These
    users cannot sign in (no usable password hash): give them tokens from `mint_tokens`."""
    ids = [str(uuid.uuid4()) for _ in roles]
    now = datetime.now(UTC)
    if database_url.startswith("sqlite:///"):
        created = now.isoformat(sep=" ")
        rows = [(uid, f"bench-{uid[:13]}@example.test", f"Bench {role} {i}", role, "bench-not-a-password-hash",
                 1, created) for i, (uid, role) in enumerate(zip(ids, roles, strict=True))]
        with contextlib.closing(sqlite3.connect(database_url.removeprefix("sqlite:///"))) as db:
            db.executemany("INSERT INTO users (id, email, name, role, password_hash, active, created_at) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            db.commit()
        return ids

    async def run() -> None:
        records = [(uuid.UUID(uid), f"bench-{uid[:13]}@example.test", f"Bench {role} {i}", role,
                    "bench-not-a-password-hash", True, now)
                   for i, (uid, role) in enumerate(zip(ids, roles, strict=True))]
        conn = await asyncpg.connect(database_url, timeout=10)
        try:
            await conn.copy_records_to_table("users", records=records, columns=[
                "id", "email", "name", "role", "password_hash", "active", "created_at"])
        finally:
            await conn.close()

    asyncio.run(run())
    return ids


def mint_tokens(secret: str, user_ids: list[str], role: str = "customer") -> list[str]:
    """HS256 access tokens for `user_ids` (all of `role`), as the API started with `secret` mints
    them (sub/role/iat/exp/iss/aud, the default issuer and audience), valid for `TOKEN_TTL`."""
    import jwt

    now = int(time.time())
    return [jwt.encode({"sub": uid, "role": role, "iat": now, "exp": now + TOKEN_TTL, "iss": "bookwire",
                        "aud": "bookwire"}, secret, algorithm="HS256") for uid in user_ids]


# --------------------------------------------------------------------------------------------------
# Figures


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (`q` in 0..1), NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-int(q * len(ordered) * 1000) // 1000))  # ceil(q * n) without float noise
    return ordered[min(rank, len(ordered)) - 1]


def fmt(value: float | None, digits: int = 1) -> str:
    """A figure for a table cell; `n/a` when it could not be measured."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True)))
    out = [line, "-" * len(line)]
    for r in rows:
        out.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(out)
