"""Shutdown and outages as an operator sees them (issue 11, item 7), with real processes:

- a worker (and the scheduler) stops on SIGTERM while its Redis is down, within its grace period;
- an API process stops on SIGTERM while PostgreSQL is unreachable and after it came back — both
  as a refusing server (the TCP proxy cut) and as a silent one (the proxy drops every byte: no
  reset, the way a host that went away looks), which once made `bookwire api` hang on SIGTERM;
- an outage logs one line per failed request, with its cause and no traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import bookwire, bookwire_env, fresh_database, running_api
from proxy import TcpProxy
from test_database_outage import through
from test_events_faults import RestartableRedis

GRACE_SECONDS = 15.0
"""What a supervisor waits after SIGTERM before SIGKILL (systemd's default is 90 s, Kubernetes' 30 s)."""


def _stops_within(process: subprocess.Popen[bytes], seconds: float) -> float:
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"pid {process.pid} still ran {seconds} s after SIGTERM")
    return time.monotonic() - started


def _wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("part", ["worker", "scheduler"])
def test_a_worker_stops_on_sigterm_while_redis_is_down(tmp_path: Path, part: str) -> None:
    redis = RestartableRedis(tmp_path / "redis")
    redis.start()
    log = tmp_path / f"{part}.log"
    process = bookwire(part, env=bookwire_env(REDIS_URL=redis.url, DATA_DIR=str(tmp_path)), log=log)
    try:
        _wait_for(lambda: "Listening on" in log.read_text() or "Registering birth" in log.read_text(), 15,
                  f"the {part} to start")
        redis.stop()
        # RQ's worker retries inside its loop ("could not connect"); the scheduler's loop restarts it.
        _wait_for(lambda: any(words in log.read_text() for words in ("lost Redis", "could not connect to Redis")),
                  10, f"the {part} to notice")
        time.sleep(0.5)  # inside a retry
        assert _stops_within(process, GRACE_SECONDS) < GRACE_SECONDS
    finally:
        if process.poll() is None:
            process.kill()
        redis.stop()
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


class StallingProxy(TcpProxy):
    """A TcpProxy that can also go silent: connections stay open, bytes go nowhere (no reset)."""

    stalled = False

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if not self.stalled:
                    writer.write(data)
                    await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()
        self._writers.discard(writer)


@contextmanager
def api_behind_proxy(tmp_path: Path, redis_url: str) -> Iterator[tuple[str, subprocess.Popen[bytes], StallingProxy,
                                                                         httpx.Client]]:
    """A `bookwire api` on a fresh PostgreSQL database reached through a proxy, with a signed-in client."""
    with fresh_database("postgres", tmp_path) as database_url, \
            StallingProxy(urlsplit(database_url).port or 5432) as proxy, \
            running_api(tmp_path, redis_url, through(proxy, database_url)) as (url, process), \
            httpx.Client(base_url=url, timeout=10) as client:
        token = client.post("/v1/auth/register", json={
            "email": "ops@example.test", "password": "password-123", "name": "Ops", "role": "provider"}
        ).json()["access_token"]
        client.headers["Authorization"] = f"Bearer {token}"
        assert client.get("/v1/resources").status_code == 200
        yield url, process, proxy, client


def _hung_requests(client: httpx.Client, count: int = 4) -> None:
    """Requests that wait on a silent database (the client gives up; the API's tasks stay)."""
    for _ in range(count):
        with contextlib.suppress(httpx.TimeoutException):
            client.post("/v1/resources", json={"name": "Room"}, timeout=0.5)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("outage", ["refused", "silent"])
def test_the_api_stops_on_sigterm_while_postgresql_is_unreachable(tmp_path: Path, redis_url: str,
                                                                   outage: str) -> None:
    with api_behind_proxy(tmp_path, redis_url) as (_, process, proxy, client):
        if outage == "refused":
            proxy.cut()
            assert client.get("/v1/resources").status_code == 503
        else:
            proxy.stalled = True
            _hung_requests(client)
        assert _stops_within(process, GRACE_SECONDS) < GRACE_SECONDS


@pytest.mark.timeout(30)
def test_the_api_stops_on_sigterm_after_a_silent_postgresql_outage(tmp_path: Path, redis_url: str) -> None:
    with api_behind_proxy(tmp_path, redis_url) as (_, process, proxy, client):
        proxy.stalled = True
        _hung_requests(client)
        proxy.stalled = False
        _wait_for(lambda: client.get("/v1/resources", timeout=2).status_code == 200, 10, "the API to recover")
        assert _stops_within(process, GRACE_SECONDS) < GRACE_SECONDS


@pytest.mark.timeout(30)
def test_an_outage_logs_one_line_per_failed_request_without_a_traceback(tmp_path: Path, redis_url: str) -> None:
    with api_behind_proxy(tmp_path, redis_url) as (_, process, proxy, client):
        proxy.cut()
        ids = [f"outage-{n}" for n in range(30)]
        for request_id in ids:
            answer = client.get("/v1/resources", headers={"X-Request-ID": request_id})
            assert answer.status_code == 503 and answer.headers["x-request-id"] == request_id
        time.sleep(1.5)  # asyncpg's pool keeps trying to reconnect meanwhile: it logs too
        proxy.restore()
        _stops_within(process, GRACE_SECONDS)
    text = (tmp_path / "api.log").read_text()
    assert "Traceback" not in text, text[-3000:]
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    for request_id in ids:
        mine = [line for line in lines if line.get("request_id") == request_id]
        failures = [line for line in mine if line["level"] != "info"]
        assert len(failures) == 1, mine  # one line with the cause, beside the access log line
        assert "database is unavailable" in failures[0]["message"] and "refused" in failures[0]["message"]
        assert failures[0]["user_id"]
        assert [line["status"] for line in mine if line["logger"] == "bookwire.access"] == [503]
