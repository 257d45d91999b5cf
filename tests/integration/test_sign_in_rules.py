"""Signing in and the admin bootstrap under attack: rate limits, what a deactivated account's
sign-in reveals, and never promoting an account that someone else registered."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import httpx
from conftest import Server, assert_problem, bookwire, bookwire_env, register, running_api, wait_for_http

from app.embedded_redis import free_port


def sign_in(client: httpx.Client, email: str, password: str) -> httpx.Response:
    return client.post("/v1/auth/token", json={"email": email, "password": password})


def test_ten_failed_sign_ins_lock_the_email_for_a_minute(server: Server) -> None:
    victim = register(server, "customer")
    other = register(server, "customer")
    with server.client() as client:
        for _ in range(10):
            assert_problem(sign_in(client, victim.email, "wrong-password"), 401)
        locked = sign_in(client, victim.email, "password-123")  # even the right password, for now
        body = assert_problem(locked, 429)
        assert 1 <= int(locked.headers["Retry-After"]) <= 60, locked.headers
        assert "Too many failed sign-ins" in body["detail"]
        assert sign_in(client, other.email, "password-123").status_code == 200  # others are not affected


def test_a_deactivated_accounts_sign_in_does_not_tell_whether_the_password_was_right(server: Server) -> None:
    victim = register(server, "customer")
    admin_token = server.client().post("/v1/auth/token", json={
        "email": "root@bookwire.test", "password": "admin-password-1"}).json()["access_token"]
    with server.client(admin_token) as admin:
        assert admin.patch(f"/v1/users/{victim.id}", json={"active": False}).status_code == 200
    with server.client() as client:
        right = assert_problem(sign_in(client, victim.email, "password-123"), 401)
        wrong = assert_problem(sign_in(client, victim.email, "not-the-password"), 401)
    assert right == wrong, (right, wrong)


def test_auth_endpoints_are_limited_per_client_address(tmp_path: Path, redis_url: str) -> None:
    with running_api(tmp_path, redis_url, AUTH_RATE_LIMIT="5/1m") as (url, _):
        with httpx.Client(base_url=url) as client:
            answers = [client.post("/v1/auth/register", json={
                "email": f"flood-{uuid.uuid4().hex[:8]}@example.test", "password": "password-123",
                "name": "Flood", "role": "customer"}) for _ in range(7)]
            statuses = [a.status_code for a in answers]
            assert statuses[:5] == [201] * 5 and statuses[5:] == [429, 429], statuses
            assert_problem(answers[-1], 429)
            assert 1 <= int(answers[-1].headers["Retry-After"]) <= 60
            assert_problem(sign_in(client, "anyone@example.test", "password-123"), 429)  # every /v1/auth/ path
            assert client.get("/health").status_code == 200  # the rest of the API is not limited


def test_the_admin_bootstrap_never_promotes_a_registered_account(tmp_path: Path, redis_url: str) -> None:
    email = f"future-admin-{uuid.uuid4().hex[:8]}@example.test"
    with running_api(tmp_path, redis_url) as (url, _), httpx.Client(base_url=url) as client:
        client.post("/v1/auth/register", json={"email": email, "password": "squatter-pass",
                                               "name": "Squatter", "role": "customer"}).raise_for_status()
        squatter_token = sign_in(client, email, "squatter-pass").json()["access_token"]
    env = bookwire_env(DATABASE_URL=f"sqlite:///{tmp_path / 'bookwire.sqlite3'}", REDIS_URL=redis_url,
                       DATA_DIR=str(tmp_path), PORT=str(free_port()), ADMIN_EMAIL=email,
                       ADMIN_PASSWORD="new-admin-pass")
    refused = bookwire("api", env=env, log=tmp_path / "refused.log")
    assert refused.wait(timeout=60) != 0
    assert "does not turn it into an admin" in (tmp_path / "refused.log").read_text()
    cli = subprocess.run([sys.executable, "-m", "app.cli", "create-admin", "--email", email, "--password",
                          "new-admin-pass"], env=env, capture_output=True, text=True, timeout=60)
    assert cli.returncode != 0 and "Choose another e-mail" in cli.stderr, (cli.stdout, cli.stderr)
    with running_api(tmp_path, redis_url, migrate=False) as (url, _):
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {squatter_token}"}) as client:
            me = client.get("/v1/me").json()
            assert me["role"] == "customer", me
            assert_problem(client.get("/v1/users"), 403)


def test_resetting_an_admins_password_revokes_its_old_tokens(tmp_path: Path, redis_url: str) -> None:
    with running_api(tmp_path, redis_url) as (url, _):
        with httpx.Client(base_url=url) as client:
            old = sign_in(client, "root@bookwire.test", "admin-password-1").json()["access_token"]
    env = bookwire_env(DATABASE_URL=f"sqlite:///{tmp_path / 'bookwire.sqlite3'}", REDIS_URL=redis_url,
                       DATA_DIR=str(tmp_path))
    cli = subprocess.run([sys.executable, "-m", "app.cli", "create-admin", "--email", "root@bookwire.test",
                          "--password", "a-new-password"], env=env, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    port = free_port()
    process = bookwire("api", env={**env, "PORT": str(port), "ADMIN_PASSWORD": "a-new-password"},
                       log=tmp_path / "api2.log")
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", process)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            assert_problem(client.get("/v1/me", headers={"Authorization": f"Bearer {old}"}), 401)
            new = sign_in(client, "root@bookwire.test", "a-new-password").json()["access_token"]
            assert client.get("/v1/users", headers={"Authorization": f"Bearer {new}"}).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=15)
