"""`bookwire up`, the README's run command: everything from nothing, and a restart keeps state."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
from conftest import ADMIN_EMAIL, ADMIN_PASSWORD, at, bookwire, bookwire_env, wait_for_http

from app.embedded_redis import free_port


def _start(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = bookwire_env(DATA_DIR=str(data_dir), PORT=str(port))
    env.pop("JWT_SECRET")  # `up` must make and keep its own shared secret
    process = bookwire("up", env=env, log=data_dir.parent / f"up-{port}.log")
    wait_for_http(f"http://127.0.0.1:{port}/health", process, timeout=60)
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0


def _redis_port(data_dir: Path) -> int:
    """The port the embedded Redis listened on, read from its log's startup line."""
    found = re.search(r"port=(\d+)", (data_dir / "redis" / "redis.log").read_text())
    assert found, "redis.log names no port"
    return int(found.group(1))


def _check_printed_addresses(log_path: Path, base: str) -> None:
    """Every address `up` printed answers 200 (`/` by way of a redirect to the portal), and the
    start-up says things once: one line for the migrations, no engine banner from each process."""
    log = log_path.read_text()
    urls = {url.rstrip(".,;)") for url in re.findall(r"http://[^\s]+", log)}
    assert {f"{base}/app", f"{base}/schema", f"{base}/schema/openapi.json", f"{base}/live",
            f"{base}/health"} <= urls, log
    for url in urls:
        answer = httpx.get(url, timeout=5, follow_redirects=True)
        assert answer.status_code == 200, f"{url} printed by `up` answers {answer.status_code}"
    home = httpx.get(base, timeout=5, follow_redirects=True)
    assert home.history and home.history[0].status_code in (302, 307), home.history
    assert home.headers["content-type"].startswith("text/html")
    assert "Running Sqlite version" not in log and "already complete" not in log, log
    assert re.search(r"^Database sqlite:///\S+: applied \d+ migrations$", log, re.MULTILINE), log


def test_up_starts_everything_and_a_restart_keeps_state(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = _start(data_dir, port)
    try:
        ready = httpx.get(f"{base}/ready", timeout=5)
        for _ in range(50):  # the scheduler registers itself a moment after the API answers
            if ready.status_code == 200:
                break
            ready = httpx.get(f"{base}/ready", timeout=5)
        assert ready.json()["checks"] == {"database": True, "redis": True, "scheduler": True}
        _check_printed_addresses(data_dir.parent / f"up-{port}.log", base)
        token = httpx.post(f"{base}/v1/auth/token", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}).json()
        admin = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token['access_token']}"})
        provider = httpx.post(f"{base}/v1/auth/register", json={
            "email": "p@example.test", "password": "password-123", "name": "P", "role": "provider"}).json()
        resource = httpx.post(f"{base}/v1/resources", json={"name": "Room"},
                              headers={"Authorization": f"Bearer {provider['access_token']}"}).json()
        customer = httpx.post(f"{base}/v1/auth/register", json={
            "email": "c@example.test", "password": "password-123", "name": "C", "role": "customer"}).json()
        body = {"resource_id": resource["id"], "starts_at": at(2), "ends_at": at(3)}
        headers = {"Authorization": f"Bearer {customer['access_token']}", "Idempotency-Key": "k1"}
        first = httpx.post(f"{base}/v1/bookings", json=body, headers=headers)
        assert first.status_code == 201
        assert admin.get("/v1/users").status_code == 200
        created = _created_event(base, customer["access_token"], first.json()["id"])
        assert (data_dir / "bookwire.sqlite3").exists()
        redis_port = _redis_port(data_dir)
    finally:
        _stop(process)
    with socket.socket() as probe:  # the private Redis stopped with the app
        assert probe.connect_ex(("127.0.0.1", redis_port)) != 0

    process = _start(data_dir, port)
    try:
        # Event history lives only in Redis: getting the event back proves the AOF kept it.
        assert _created_event(base, customer["access_token"], first.json()["id"]) == created
        # The idempotency record is kept with the booking, in the database.
        again = httpx.post(f"{base}/v1/bookings", json=body, headers=headers)
        assert again.status_code == 201 and again.json() == first.json()
        # Tokens minted before the restart still verify: the secret is shared through DATA_DIR.
        me = httpx.get(f"{base}/v1/me", headers={"Authorization": f"Bearer {customer['access_token']}"})
        assert me.status_code == 200
    finally:
        _stop(process)
    assert list((data_dir / "redis").glob("appendonly*"))


def _created_event(base: str, token: str, booking_id: str) -> dict[str, Any]:
    """The `booking.created` event of a booking in the customer's history (waiting for the outbox)."""
    deadline = time.monotonic() + 10
    while True:
        answer = httpx.get(f"{base}/v1/events/poll", params={"cursor": "0-0", "timeout": 0},
                           headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
        for event in answer.json()["events"]:
            if event["type"] == "booking.created" and event["data"]["id"] == booking_id:
                return dict(event)
        assert time.monotonic() < deadline, f"no booking.created for {booking_id}: {answer.text}"
        time.sleep(0.1)
