"""The webhooks API (SPEC "Webhooks"): who may manage them, what a webhook looks like, the secret
shown once, bad input, addresses refused (SSRF), and `bookwire service-token`. Delivery itself is
test_webhook_delivery.py's."""

from __future__ import annotations

import subprocess
import sys
import uuid

import httpx
import pytest
from conftest import Cast, Server, assert_problem, bookwire_env
from events import service_token

PUBLIC_URL = "https://93.184.215.14/bookwire"  # a public address: no DNS here


def create(http: httpx.Client, **body: object) -> httpx.Response:
    return http.post("/v1/webhooks", json={"url": PUBLIC_URL, "event_types": ["booking.*"], **body})


def test_an_admin_manages_webhooks_and_sees_the_secret_once(server: Server, cast: Cast) -> None:
    answer = cast.admin.http.post("/v1/webhooks", json={"url": "https://93.184.215.14/hook",
                                                        "event_types": ["booking.*", "message.created"]})
    assert answer.status_code == 201, answer.text
    created = answer.json()
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 40
    assert set(created) == {"id", "url", "event_types", "active", "created_at", "updated_at", "secret"}
    hook_id = created["id"]
    shown = cast.admin.http.get(f"/v1/webhooks/{hook_id}").json()
    assert "secret" not in shown and shown["event_types"] == ["booking.*", "message.created"]
    listed = cast.admin.http.get("/v1/webhooks", params={"limit": 200}).json()
    assert hook_id in {w["id"] for w in listed["items"]}
    assert all("secret" not in w for w in listed["items"])

    changed = cast.admin.http.patch(f"/v1/webhooks/{hook_id}", json={"active": False, "event_types": ["*"]})
    assert changed.status_code == 200, changed.text
    assert changed.json()["active"] is False and changed.json()["event_types"] == ["*"]
    deliveries = cast.admin.http.get(f"/v1/webhooks/{hook_id}/deliveries")
    assert deliveries.status_code == 200 and deliveries.json() == {"items": [], "next_cursor": None}
    assert cast.admin.http.delete(f"/v1/webhooks/{hook_id}").status_code == 204
    assert_problem(cast.admin.http.get(f"/v1/webhooks/{hook_id}"), 404)
    assert_problem(cast.admin.http.get(f"/v1/webhooks/{hook_id}/deliveries"), 404)


def test_only_admins_and_webhook_service_tokens_manage_webhooks(server: Server, cast: Cast) -> None:
    for actor in (cast.customer, cast.owner):
        assert_problem(create(actor.http), 403)
        assert_problem(actor.http.get("/v1/webhooks"), 403)
    with server.client() as anonymous:
        assert_problem(create(anonymous), 401)
    with server.client(service_token("events:publish")) as publisher:
        assert_problem(create(publisher), 403)
    with server.client(service_token("webhooks:manage")) as integrator:
        answer = integrator.post("/v1/webhooks", json={"url": "https://93.184.215.14/x", "event_types": ["*"]},
                                 headers={"Idempotency-Key": "first"})
        assert answer.status_code == 201, answer.text
        again = integrator.post("/v1/webhooks", json={"url": "https://93.184.215.14/x", "event_types": ["*"]},
                                headers={"Idempotency-Key": "first"})
        assert again.json()["id"] == answer.json()["id"]
        assert integrator.delete(f"/v1/webhooks/{answer.json()['id']}").status_code == 204
        # A webhooks token is no publisher, and no user.
        assert_problem(integrator.post("/v1/events", json={"type": "x.y", "channels": ["broadcast"], "data": {}}), 403)
        assert_problem(integrator.get("/v1/me"), 403)


@pytest.mark.parametrize("body, field", [
    ({"url": "ftp://example.com/x"}, "url"),
    ({"url": "http://93.184.215.14/x"}, "url"),           # plain http, without WEBHOOK_ALLOW_PRIVATE
    ({"url": "https://user:pw@example.com/x"}, "url"),
    ({"url": "https://localhost/x"}, "url"),
    ({"url": "https://127.0.0.1:9/x"}, "url"),
    ({"url": "https://10.0.0.8/x"}, "url"),
    ({"url": "https://192.168.1.1/x"}, "url"),
    ({"url": "https://169.254.169.254/latest/meta-data"}, "url"),  # the cloud metadata service
    ({"url": "https://[::1]/x"}, "url"),
    ({"url": "https://[::ffff:127.0.0.1]/x"}, "url"),     # IPv4 loopback inside IPv6
    ({"url": "https://100.64.0.1/x"}, "url"),             # carrier-grade NAT
    ({"url": "https://metadata.google.internal/x"}, "url"),
    ({"url": "https://no-such-host.invalid/x"}, "url"),
    ({"event_types": []}, "event_types"),
    ({"event_types": ["Booking.Created"]}, "event_types"),
    ({"event_types": ["booking.*.x"]}, "event_types"),
    ({"event_types": ["booking\n"]}, "event_types"),
    ({"event_types": ["x.y"] * 51}, "event_types"),
    ({"secret": "whsec_mine"}, "secret"),
])
def test_bad_webhooks_are_refused_naming_the_field(server: Server, cast: Cast, body: dict[str, object],
                                                   field: str) -> None:
    before = cast.admin.http.get("/v1/webhooks", params={"limit": 200}).json()["items"]
    problem = assert_problem(create(cast.admin.http, **body), 422)
    assert problem["errors"][0]["field"].split(".")[0] == field, problem
    assert cast.admin.http.get("/v1/webhooks", params={"limit": 200}).json()["items"] == before


def test_a_webhook_cannot_be_moved_to_a_private_address(server: Server, cast: Cast) -> None:
    created = create(cast.admin.http).json()
    problem = assert_problem(cast.admin.http.patch(f"/v1/webhooks/{created['id']}",
                                                   json={"url": "https://127.0.0.1/x"}), 422)
    assert problem["errors"][0]["field"] == "url"
    assert cast.admin.http.get(f"/v1/webhooks/{created['id']}").json()["url"] == PUBLIC_URL


def test_retrying_an_unknown_delivery_is_404(server: Server, cast: Cast) -> None:
    created = create(cast.admin.http).json()
    assert_problem(cast.admin.http.post(f"/v1/webhooks/{created['id']}/deliveries/{uuid.uuid4()}/retry"), 404)
    assert_problem(cast.admin.http.post(f"/v1/webhooks/{uuid.uuid4()}/deliveries/{uuid.uuid4()}/retry"), 404)


def test_the_cli_prints_a_service_token_that_the_api_accepts(server: Server) -> None:
    env = bookwire_env(DATABASE_URL=server.database_url)
    cli = [sys.executable, "-m", "app.cli", "service-token"]
    printed = subprocess.run([*cli, "--scope", "webhooks:manage,events:publish", "--name", "crm-sync", "--days", "30"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    token = printed.stdout.strip()
    with server.client(token) as integrator:
        assert integrator.get("/v1/webhooks").status_code == 200
        published = integrator.post("/v1/events", json={"type": "crm.synced", "channels": ["broadcast"], "data": {}})
        assert published.status_code == 202, published.text
    refused = subprocess.run([*cli, "--scope", "admin:everything", "--name", "x"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode == 2 and "--scope" in refused.stderr
