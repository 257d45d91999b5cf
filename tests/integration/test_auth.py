"""Registration, tokens, forged tokens, stream tokens and account deactivation."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from conftest import (
    TEST_JWT_SECRET,
    Actor,
    Cast,
    Server,
    assert_problem,
    bookwire,
    bookwire_env,
    register,
    wait_for_http,
)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.db.engine import bind_engine, close_engine, engine_from_url, open_engine
from app.db.tables import User
from app.embedded_redis import free_port

ISSUER = AUDIENCE = "bookwire"


def _claims(actor: Actor, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": actor.id, "role": actor.role, "iat": now, "exp": now + 600, "iss": ISSUER, "aud": AUDIENCE}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_register_returns_user_and_working_token(server: Server) -> None:
    actor = register(server, "customer", "Ada")
    me = actor.http.get("/v1/me")
    assert me.status_code == 200
    assert me.json()["id"] == actor.id and me.json()["role"] == "customer" and me.json()["active"] is True
    assert set(me.json()) == {"id", "email", "name", "role", "active", "created_at"}


def test_duplicate_email_is_409_case_insensitively(server: Server) -> None:
    actor = register(server, "provider")
    with server.client() as client:
        again = client.post("/v1/auth/register", json={
            "email": actor.email.upper(), "password": "password-123", "name": "Copy", "role": "customer"})
    assert_problem(again, 409)


def test_token_endpoint_checks_password(server: Server) -> None:
    actor = register(server, "customer")
    with server.client() as client:
        good = client.post("/v1/auth/token", json={"email": actor.email, "password": "password-123"})
        bad = client.post("/v1/auth/token", json={"email": actor.email, "password": "wrong-password"})
        nobody = client.post("/v1/auth/token", json={"email": "nobody@example.test", "password": "whatever-1"})
    assert good.status_code == 200 and good.json()["token_type"] == "bearer" and good.json()["expires_in"] > 0
    assert_problem(bad, 401)
    assert_problem(nobody, 401)


def test_password_is_stored_hashed_with_argon2id(server: Server) -> None:
    actor = register(server, "customer")
    # Read the stored hash straight from the database the server uses.
    async def stored_hash() -> str:
        engine = engine_from_url(server.database_url)
        bind_engine(engine)
        await open_engine(engine)
        try:
            row = await User.select(User.password_hash).where(User.email == actor.email).first()
        finally:
            await close_engine(engine)
        assert row is not None
        return str(row["password_hash"])

    assert asyncio.run(stored_hash()).startswith("$argon2id$")


FORGERIES = {
    "alg_none": lambda a: _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(_claims(a)) + ".",
    "wrong_key": lambda a: jwt.encode(_claims(a), "another-secret-that-is-long-enough-0123456789", "HS256"),
    "other_algorithm": lambda a: jwt.encode(_claims(a), TEST_JWT_SECRET, "HS512"),
    "tampered_payload": lambda a: (lambda t: t.split(".")[0] + "." + _b64(_claims(a, role="admin")) + "."
                                   + t.split(".")[2])(jwt.encode(_claims(a), TEST_JWT_SECRET, "HS256")),
    "expired": lambda a: jwt.encode(_claims(a, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600),
                                    TEST_JWT_SECRET, "HS256"),
    "not_yet_valid": lambda a: jwt.encode(_claims(a, nbf=int(time.time()) + 3600), TEST_JWT_SECRET, "HS256"),
    "issued_in_future": lambda a: jwt.encode(_claims(a, iat=int(time.time()) + 3600), TEST_JWT_SECRET, "HS256"),
    "wrong_issuer": lambda a: jwt.encode(_claims(a, iss="evil"), TEST_JWT_SECRET, "HS256"),
    "wrong_audience": lambda a: jwt.encode(_claims(a, aud="other-app"), TEST_JWT_SECRET, "HS256"),
    "no_expiry": lambda a: jwt.encode(_claims(a, exp=None), TEST_JWT_SECRET, "HS256"),
    "unknown_user": lambda a: jwt.encode(_claims(a, sub="00000000-0000-4000-8000-000000000000"),
                                         TEST_JWT_SECRET, "HS256"),
    "subject_not_uuid": lambda a: jwt.encode(_claims(a, sub="admin"), TEST_JWT_SECRET, "HS256"),
    "garbage": lambda a: "not.a.jwt",
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_tokens_are_401(server: Server, cast: Cast, forgery: str) -> None:
    token = FORGERIES[forgery](cast.customer)
    with server.client(token) as client:
        assert_problem(client.get("/v1/me"), 401)
        assert_problem(client.get("/v1/bookings"), 401)


def test_a_correctly_signed_external_token_is_accepted(server: Server, cast: Cast) -> None:
    token = jwt.encode(_claims(cast.customer), TEST_JWT_SECRET, "HS256")
    with server.client(token) as client:
        assert client.get("/v1/me").json()["id"] == cast.customer.id


def test_missing_or_malformed_authorization_is_401(server: Server) -> None:
    with server.client() as client:
        assert_problem(client.get("/v1/me"), 401)
        assert_problem(client.get("/v1/me", headers={"Authorization": "Basic abc"}), 401)
        assert_problem(client.get("/v1/me", headers={"Authorization": "Bearer"}), 401)


def test_stream_token_is_short_lived_and_refused_by_the_rest_of_the_api(server: Server, cast: Cast) -> None:
    answer = cast.customer.http.post("/v1/auth/stream-token")
    assert answer.status_code == 200 and answer.json()["expires_in"] == 60
    assert answer.json()["heartbeat_seconds"] == 15  # SSE_HEARTBEAT_SECONDS: how the client spots a silent stream
    token = answer.json()["token"]
    claims = jwt.decode(token, TEST_JWT_SECRET, algorithms=["HS256"], audience=AUDIENCE)
    assert 59 < claims["exp"] - claims["iat"] <= 60 and claims["sub"] == cast.customer.id  # iat to the ms
    with server.client(token) as client:
        assert_problem(client.get("/v1/me"), 401)
        assert_problem(client.get("/v1/bookings"), 401)


def test_service_token_may_not_call_the_booking_api(server: Server, cast: Cast) -> None:
    token = jwt.encode(_claims(cast.admin, scope="events:publish"), TEST_JWT_SECRET, "HS256")
    with server.client(token) as client:
        assert_problem(client.get("/v1/bookings"), 403)


def test_admin_deactivates_and_reactivates_a_user(server: Server, cast: Cast) -> None:
    victim = register(server, "customer")
    assert victim.http.get("/v1/me").status_code == 200
    off = cast.admin.http.patch(f"/v1/users/{victim.id}", json={"active": False})
    assert off.status_code == 200 and off.json()["active"] is False
    assert_problem(victim.http.get("/v1/me"), 401)
    with server.client() as client:
        assert_problem(client.post("/v1/auth/token", json={"email": victim.email, "password": "password-123"}), 401)
    on = cast.admin.http.patch(f"/v1/users/{victim.id}", json={"active": True})
    assert on.status_code == 200 and on.json()["active"] is True
    assert_problem(victim.http.get("/v1/me"), 401)  # the old token died with the deactivation
    with server.client() as client:
        token = client.post("/v1/auth/token", json={"email": victim.email, "password": "password-123"})
    assert server.client(token.json()["access_token"]).get("/v1/me").status_code == 200


def test_only_admins_manage_users(server: Server, cast: Cast) -> None:
    assert_problem(cast.customer.http.get("/v1/users"), 403)
    announcing = cast.owner.http.post(
        "/v1/admin/announcements", json={"title": "Hi", "body": "all"})
    assert assert_problem(announcing, 403)["detail"] == "Only admins may do this."  # not "manage users"
    assert_problem(cast.owner.http.patch(f"/v1/users/{cast.customer.id}", json={"active": False}), 403)
    assert cast.customer.http.get("/v1/me").status_code == 200
    assert_problem(cast.admin.http.patch(f"/v1/users/{cast.admin.id}", json={"active": False}), 403)
    assert_problem(cast.admin.http.patch("/v1/users/00000000-0000-4000-8000-000000000000", json={"active": False}),
                   404)


def test_admin_lists_users_page_by_page(server: Server, cast: Cast) -> None:
    for _ in range(3):
        register(server, "provider")
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, "role": "provider", **({"cursor": cursor} if cursor else {})}
        page = cast.admin.http.get("/v1/users", params=params).json()
        assert len(page["items"]) <= 2
        assert all(u["role"] == "provider" for u in page["items"])
        seen += [u["id"] for u in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) >= 5  # two cast providers + three new ones


def test_rs256_accepts_identity_provider_tokens_and_refuses_key_confusion(tmp_path: Path, redis_url: str) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    (tmp_path / "public.pem").write_text(public_pem)
    (tmp_path / "private.pem").write_text(private_pem)
    port = free_port()
    env = bookwire_env(DATA_DIR=str(tmp_path), REDIS_URL=redis_url, PORT=str(port), JWT_ALGORITHM="RS256",
                       JWT_PUBLIC_KEY=str(tmp_path / "public.pem"), JWT_PRIVATE_KEY=str(tmp_path / "private.pem"))
    env.pop("JWT_SECRET")
    assert bookwire("migrate", env=env).wait(timeout=60) == 0
    process = bookwire("api", env=env, log=tmp_path / "api.log")
    try:
        wait_for_http(f"http://127.0.0.1:{port}/health", process)
        server = Server("sqlite-rs256", f"http://127.0.0.1:{port}", "", tmp_path)
        actor = register(server, "customer")
        assert jwt.get_unverified_header(actor.token)["alg"] == "RS256"
        idp_token = jwt.encode(_claims(actor), private_pem, "RS256")  # minted elsewhere with the same key
        with server.client(idp_token) as client:
            assert client.get("/v1/me").json()["id"] == actor.id
        # The classic confusion attack: HS256 "signed" with the public key as the secret.
        forged = _b64({"alg": "HS256", "typ": "JWT"}) + "." + _b64(_claims(actor)) + "."
        signature = hmac.new(public_pem.encode(), forged[:-1].encode(), hashlib.sha256).digest()
        forged += base64.urlsafe_b64encode(signature).decode().rstrip("=")
        with server.client(forged) as client:
            assert_problem(client.get("/v1/me"), 401)
    finally:
        process.terminate()
        process.wait(timeout=15)
