"""While the database is unreachable the API answers 503 with `Retry-After` (never 500), and it
recovers by itself when the database is back. The outage is a TCP proxy in front of PostgreSQL that
the test cuts: the machine's own server is never stopped."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
from conftest import assert_problem, fresh_database, running_api
from proxy import TcpProxy


def through(proxy: TcpProxy, database_url: str) -> str:
    parts = urlsplit(database_url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


def test_the_api_answers_503_while_postgresql_is_unreachable_and_recovers(tmp_path: Path, redis_url: str) -> None:
    with fresh_database("postgres", tmp_path) as database_url, \
            TcpProxy(urlsplit(database_url).port or 5432) as proxy, \
            running_api(tmp_path, redis_url, through(proxy, database_url)) as (url, _), \
            httpx.Client(base_url=url, timeout=30) as client:
        registered = client.post("/v1/auth/register", json={
            "email": "outage@example.test", "password": "password-123", "name": "Olive", "role": "provider"})
        token = registered.json()["access_token"]
        client.headers["Authorization"] = f"Bearer {token}"
        assert client.get("/v1/me").status_code == 200

        proxy.cut()
        for answer in (client.get("/v1/me"), client.get("/v1/resources"),
                       client.post("/v1/resources", json={"name": "Room"}),
                       client.post("/v1/bookings/00000000-0000-4000-8000-000000000000/confirm"),
                       client.post("/v1/auth/token", json={"email": "outage@example.test", "password": "x" * 8})):
            body = assert_problem(answer, 503)
            assert int(answer.headers["Retry-After"]) > 0 and "database" in body["detail"], body
        # Events need only Redis, and the account was read a moment ago (an API process remembers it
        # for up to 30 s): the stream opens. A request that needs the database is what gets 503.
        with client.stream("GET", "/v1/events/stream") as stream:
            assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        assert client.get("/health").status_code == 200  # the process itself is fine
        ready = client.get("/ready")
        assert assert_problem(ready, 503)["checks"]["database"] is False

        proxy.restore()
        deadline = time.monotonic() + 15
        while (status := client.get("/v1/me").status_code) != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status == 200
        assert client.post("/v1/resources", json={"name": "Room after"}).status_code == 201
