"""Webhook deliveries end to end (SPEC "Webhooks"): real `bookwire api`, a real `bookwire worker`
(whose webhook dispatcher sends), a private Redis, SQLite, and a real HTTP receiver on loopback
(WEBHOOK_ALLOW_PRIVATE=1). Each delivery is checked with the Standard Webhooks reference library's
own verification, in order, once; failures are retried on the intervals and then alert the
admins; a stalling receiver holds only its own deliveries; a failed delivery can be sent again."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from browser import private_redis
from conftest import Actor, make_booking, make_resource, register, sign_in_admin
from events import events_since, outbox_settled, poll_cursor
from standardwebhooks.webhooks import Webhook as Verifier
from test_reminders import Stack, bookwire_stack, eventually

RETRIES = "1s,1s"  # WEBHOOK_RETRY_INTERVALS here: three attempts in all, a second apart


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A loopback HTTP server; `answers[path]` says what each request to `path` gets."""

    url: str
    got: list[Received] = field(default_factory=list)
    answers: dict[str, Callable[[int], int]] = field(default_factory=dict)
    stall: dict[str, float] = field(default_factory=dict)

    def at(self, path: str) -> list[Received]:
        return [r for r in self.got if r.path == path]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    state = Receiver("")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            with lock:
                state.got.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                                          time.monotonic()))
                count = len(state.at(self.path))
            time.sleep(state.stall.pop(self.path, 0.0))
            status = state.answers.get(self.path, lambda n: 200)(count)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("webhooks")
    with private_redis(base / "redis") as redis_url, \
            bookwire_stack(base / "var", redis_url, workers=1, schedulers=1, WEBHOOK_ALLOW_PRIVATE="1",
                           WEBHOOK_RETRY_INTERVALS=RETRIES) as running:
        yield running


@dataclass
class People:
    admin: Actor
    owner: Actor
    customer: Actor


@pytest.fixture(scope="module")
def people(stack: Stack) -> People:
    return People(sign_in_admin(stack.server), register(stack.server, "provider"), register(stack.server, "customer"))


def webhook(people: People, url: str, event_types: list[str]) -> dict[str, Any]:
    answer = people.admin.http.post("/v1/webhooks", json={"url": url, "event_types": event_types})
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


def deliveries(people: People, hook: dict[str, Any]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = people.admin.http.get(f"/v1/webhooks/{hook['id']}/deliveries",
                                                        params={"limit": 200}).json()["items"]
    return items


def verified(hook: dict[str, Any], got: Received) -> dict[str, Any]:
    """The envelope, after the reference library checked its signature (it raises otherwise)."""
    envelope: dict[str, Any] = Verifier(hook["secret"]).verify(got.body, got.headers)
    assert got.headers["webhook-id"] == envelope["id"]
    assert got.headers["content-type"] == "application/json"
    return envelope


def test_booking_events_arrive_signed_in_order_once(stack: Stack, people: People, receiver: Receiver) -> None:
    hook = webhook(people, f"{receiver.url}/all-bookings", ["booking.*"])
    cursor = poll_cursor(people.owner)
    room = make_resource(people.owner)
    booking = make_booking(people.customer, room["id"])
    for action in ("confirm", "check-in", "complete"):
        assert people.owner.http.post(f"/v1/bookings/{booking['id']}/{action}").status_code == 200
    expected = [e for e in events_since(people.owner, cursor, people.admin) if e["type"].startswith("booking.")]
    assert [e["type"] for e in expected] == ["booking.created", "booking.confirmed", "booking.checked_in",
                                             "booking.completed"]
    eventually(lambda: len(receiver.at("/all-bookings")) >= 4, 10, "four deliveries", stack.explain)
    time.sleep(0.5)  # a duplicate would show by now
    got = [verified(hook, r) for r in receiver.at("/all-bookings")]
    assert [e["id"] for e in got] == [e["id"] for e in expected]
    assert [e["data"]["version"] for e in got] == [1, 2, 3, 4]
    assert got[0]["data"]["id"] == booking["id"] and got[0]["channel"].startswith("user:")
    def recorded() -> list[dict[str, Any]] | None:  # successes are written in groups, within a second
        done = [d for d in deliveries(people, hook) if d["status"] == "succeeded"]
        return done if len(done) == 4 else None

    log = eventually(recorded, 5, "four deliveries recorded as succeeded", stack.explain)
    assert {d["attempts"] for d in log} == {1}
    assert {d["response_status"] for d in log} == {200}


def test_a_failing_receiver_is_retried_in_order_then_alerts_admins(
        stack: Stack, people: People, receiver: Receiver) -> None:
    receiver.answers["/flaky"] = lambda n: 500 if n == 1 else 204  # the first request fails
    receiver.answers["/down"] = lambda n: 503
    flaky = webhook(people, f"{receiver.url}/flaky", ["resource.*"])
    down = webhook(people, f"{receiver.url}/down", ["resource.created"])
    admin_cursor = poll_cursor(people.admin)
    first = make_resource(people.owner, name="First")
    second = make_resource(people.owner, name="Second")

    eventually(lambda: len(receiver.at("/flaky")) >= 3, 10, "the retry and the next one", stack.explain)
    calls = receiver.at("/flaky")
    sent = [json.loads(c.body)["data"]["id"] for c in calls]
    assert sent == [first["id"], first["id"], second["id"]]  # the second waited behind the first's retry
    assert calls[1].at - calls[0].at >= 0.9
    assert calls[0].headers["webhook-id"] == calls[1].headers["webhook-id"]
    # Successes are written in groups, within a second of the answer.
    eventually(lambda: sorted((d["status"], d["attempts"]) for d in deliveries(people, flaky))
               == [("succeeded", 1), ("succeeded", 2)], 5, "both deliveries recorded as succeeded", stack.explain)

    # Three attempts (the first, then one per interval), then failed, and the admins hear of it.
    eventually(lambda: [d["status"] for d in deliveries(people, down)] == ["failed", "failed"], 15,
               "both deliveries failed", stack.explain)
    assert len(receiver.at("/down")) == 6
    failed = deliveries(people, down)
    assert {d["attempts"] for d in failed} == {3} and {d["response_status"] for d in failed} == {503}
    assert {d["last_error"] for d in failed} == {"HTTP 503"}
    alerts = [e for e in events_since(people.admin, admin_cursor, people.admin) if e["type"] == "system.alert"]
    assert {a["data"]["delivery_id"] for a in alerts} == {d["id"] for d in failed}
    assert {a["data"]["kind"] for a in alerts} == {"webhook_failed"}

    # Sent again by hand: one more attempt, now answered.
    receiver.answers["/down"] = lambda n: 200
    again = people.admin.http.post(f"/v1/webhooks/{down['id']}/deliveries/{failed[0]['id']}/retry")
    assert again.status_code == 202, again.text
    eventually(lambda: failed[0]["id"] in {d["id"] for d in deliveries(people, down) if d["status"] == "succeeded"},
               10, "the retried delivery succeeded", stack.explain)


def test_a_stalling_receiver_holds_only_its_own_deliveries(stack: Stack, people: People, receiver: Receiver) -> None:
    receiver.stall["/slow"] = 8.0  # its first request hangs (under the 10 s timeout)
    webhook(people, f"{receiver.url}/slow", ["resource.updated"])
    webhook(people, f"{receiver.url}/quick", ["resource.updated"])
    room = make_resource(people.owner, name="Watched")
    started = time.monotonic()
    for price in (100, 200, 300):
        assert people.owner.http.patch(f"/v1/resources/{room['id']}", json={"description": f"v{price}"}).status_code \
            == 200
    eventually(lambda: len(receiver.at("/quick")) >= 3, 5, "the quick receiver's three deliveries", stack.explain)
    assert time.monotonic() - started < 4, "the quick receiver waited for the slow one"
    assert len(receiver.at("/slow")) == 1  # still hanging on its first


def test_custom_events_and_announcements_reach_webhooks_too(stack: Stack, people: People,
                                                            receiver: Receiver) -> None:
    hook = webhook(people, f"{receiver.url}/custom", ["crm.*", "announcement"])
    published = people.admin.http.post("/v1/events", json={"type": "crm.contact_synced", "channels": ["broadcast"],
                                                           "data": {"contact": 7}})
    assert published.status_code == 202, published.text
    announced = people.admin.http.post("/v1/admin/announcements", json={"title": "Hi", "body": "there"})
    assert announced.status_code == 202, announced.text
    eventually(lambda: len(receiver.at("/custom")) >= 2, 10, "two deliveries", stack.explain)
    got = [verified(hook, r) for r in receiver.at("/custom")]
    assert [(e["id"], e["type"]) for e in got] == [(published.json()["id"], "crm.contact_synced"),
                                                   (announced.json()["id"], "announcement")]
    assert got[0]["data"] == {"contact": 7}


def test_an_inactive_webhook_receives_nothing(stack: Stack, people: People, receiver: Receiver) -> None:
    hook = webhook(people, f"{receiver.url}/paused", ["resource.*"])
    assert people.admin.http.patch(f"/v1/webhooks/{hook['id']}", json={"active": False}).status_code == 200
    make_resource(people.owner, name="Unseen")
    outbox_settled(people.admin.http)  # a webhook receives what is published after it exists
    live = webhook(people, f"{receiver.url}/witness", ["resource.*"])
    make_resource(people.owner, name="Seen")
    eventually(lambda: len(receiver.at("/witness")) >= 1, 10, "the witness's delivery", stack.explain)
    assert receiver.at("/paused") == [] and deliveries(people, hook) == []
    assert len(deliveries(people, live)) == 1
