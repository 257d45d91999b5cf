"""Which token is good for what, and for how long: revocation on account changes, token kinds kept
apart, and claims that PyJWT alone would let through.

Each test drives the API over HTTP the way an attacker or a careless integrator would."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Any

import jwt
import pytest
from conftest import TEST_JWT_SECRET, Actor, Cast, Server, assert_problem, register
from events import connect, ok, service_token, stream_token, stream_url
from sse import open_stream

ISSUER = AUDIENCE = "bookwire"


def sign(claims: dict[str, Any]) -> str:
    return jwt.encode(claims, TEST_JWT_SECRET, "HS256")


def claims_of(actor: Actor, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"sub": actor.id, "role": actor.role, "iat": now, "exp": now + 600, "iss": ISSUER, "aud": AUDIENCE}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def me_status(server: Server, token: str) -> int:
    with server.client(token) as client:
        return client.get("/v1/me").status_code


# --- revocation -------------------------------------------------------------------------------------------


def test_a_token_issued_before_a_deactivation_stays_dead_after_reactivation(server: Server, cast: Cast) -> None:
    victim = register(server, "customer")
    old_stream_token = stream_token(victim)
    ok(cast.admin.http.patch(f"/v1/users/{victim.id}", json={"active": False}))
    ok(cast.admin.http.patch(f"/v1/users/{victim.id}", json={"active": True}))
    assert_problem(victim.http.get("/v1/me"), 401)
    assert_problem(victim.http.get("/v1/events/poll", params={"access_token": old_stream_token}), 401)
    with server.client() as client:  # signing in again right away gives a token that works
        fresh = ok(client.post("/v1/auth/token", json={"email": victim.email, "password": "password-123"}))
    assert me_status(server, fresh["access_token"]) == 200


def test_an_external_token_issued_before_a_deactivation_is_refused(server: Server, cast: Cast) -> None:
    victim = register(server, "customer")
    external = sign(claims_of(victim, iat=int(time.time()) - 5))
    assert me_status(server, external) == 200
    ok(cast.admin.http.patch(f"/v1/users/{victim.id}", json={"active": False}))
    ok(cast.admin.http.patch(f"/v1/users/{victim.id}", json={"active": True}))
    assert me_status(server, external) == 401


# --- token kinds ------------------------------------------------------------------------------------------


def test_a_stream_token_may_not_publish(server: Server, cast: Cast) -> None:
    token = ok(cast.admin.http.post("/v1/auth/stream-token"))["token"]  # an admin's, so only its kind refuses it
    with server.client(token) as client:
        body = assert_problem(client.post("/v1/events", json={"type": "test.sneaky", "channels": ["broadcast"]}), 401)
    assert "stream token" in body["detail"]


def test_a_token_that_is_both_stream_and_service_token_is_refused_everywhere(server: Server, cast: Cast) -> None:
    hybrid = sign(claims_of(cast.customer, token_use="stream", scope="events:publish", exp=int(time.time()) + 60))
    assert_problem(
        server.client().get("/v1/events/poll", params={"access_token": hybrid, "timeout": 0}), 401
    )
    with server.client(hybrid) as client:
        assert_problem(client.get("/v1/events/poll", params={"timeout": 0}), 401)
        assert_problem(client.post("/v1/events", json={"type": "test.hybrid", "channels": ["broadcast"]}), 401)
        assert_problem(client.get("/v1/me"), 401)


def test_publishing_checks_the_token_before_the_body(server: Server) -> None:
    with server.client() as client:
        assert_problem(client.post("/v1/events", json={"nonsense": True}), 401)
    with server.client("not.a.token") as client:
        assert_problem(client.post("/v1/events", content=b"{not json"), 401)


def test_dedup_keys_belong_to_their_publisher(server: Server, cast: Cast) -> None:
    key = f"shared-{uuid.uuid4().hex}"
    body = {"type": "test.dedup_scope", "channels": ["broadcast"], "dedup_key": key}
    with server.client(service_token()) as first, server.client(service_token()) as second:
        one = first.post("/v1/events", json=body)
        two = second.post("/v1/events", json=body)
        again = first.post("/v1/events", json=body)
    assert one.status_code == 202 and two.status_code == 202, (one.text, two.text)
    assert one.json()["id"] != two.json()["id"]
    assert again.status_code == 200 and again.json() == {"id": one.json()["id"], "deduplicated": True}


# --- claims PyJWT alone accepts -----------------------------------------------------------------------------


def _unsigned_segment(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


BAD_CLAIMS = {
    "exp_as_string": lambda a: claims_of(a, exp=str(int(time.time()) + 600)),
    "iat_as_string": lambda a: claims_of(a, iat=str(int(time.time()))),
    "exp_as_bool": lambda a: claims_of(a, exp=True),
    "ten_year_lifetime": lambda a: claims_of(a, exp=int(time.time()) + 10 * 365 * 86400),
    "sub_upper_case": lambda a: claims_of(a, sub=a.id.upper()),
    "sub_without_dashes": lambda a: claims_of(a, sub=a.id.replace("-", "")),
    "sub_in_braces": lambda a: claims_of(a, sub="{" + a.id + "}"),
    "sub_as_number": lambda a: claims_of(a, sub=12345),
    "no_sub": lambda a: claims_of(a, sub=None),
    "unknown_token_use": lambda a: claims_of(a, token_use="refresh"),
    "over_8_kib": lambda a: claims_of(a, padding="x" * 20_000),
}


@pytest.mark.parametrize("case", sorted(BAD_CLAIMS))
def test_tokens_with_odd_claims_are_401(server: Server, cast: Cast, case: str) -> None:
    token = sign(BAD_CLAIMS[case](cast.customer))
    with server.client(token) as client:
        assert_problem(client.get("/v1/me"), 401)


def test_oversized_tokens_are_refused_before_they_are_parsed(server: Server, cast: Cast) -> None:
    medium = sign(claims_of(cast.customer, padding="x" * 20_000))  # fits the header limit, not the token limit
    with server.client(medium) as client:
        assert "longer than" in assert_problem(client.get("/v1/me"), 401)["detail"]
    huge = sign(claims_of(cast.customer, padding="x" * 100_000))  # past the header limit altogether
    started = time.monotonic()
    with server.client(huge) as client:
        assert_problem(client.get("/v1/me"), 431)
    assert time.monotonic() - started < 2


def test_stream_refuses_a_stream_token_that_claims_a_publish_scope(server: Server, cast: Cast) -> None:
    hybrid = sign(claims_of(cast.customer, token_use="stream", scope="events:publish", exp=int(time.time()) + 60))

    async def scenario() -> None:
        stream = await open_stream(stream_url(server.base_url, access_token=hybrid))
        assert stream.status == 401, stream.body
        fine = await connect(server.base_url, stream_token(cast.customer))  # the real kind still opens
        fine.close()

    asyncio.run(scenario())
