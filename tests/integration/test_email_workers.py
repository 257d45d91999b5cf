"""Email sent by RQ workers, against real processes (SPEC "Email", issue 4 items 1-4).

Every test runs a fresh `bookwire api` on its own SQLite file, real `bookwire worker` (and, where
retries or the sweep are involved, `bookwire scheduler`) processes, and an aiosmtpd sink on
127.0.0.1 that records every DATA transfer it sees. The module has a Redis of its own, emptied
before each test, so no job queued by another test (or another module) ever reaches these workers.

- Status changes: each change in the spec's list mails the right people (and check-in mails
  nobody); every message is multipart/alternative text + HTML with a Message-ID, the resource, the
  start in the resource's timezone, the booking id and `APP_URL/bookings/<id>`. The API only
  enqueues: with no worker running, deliveries stay `queued` and the sink stays empty.
- Templates: the 13 defaults, overrides (used by the next email), preview, reset, and refusals
  (undefined variables, Python internals) that store nothing; 403 for non-admins, 404 for unknown keys.
- Simulation mode (no SMTP_HOST): one `.eml` per message in `$DATA_DIR/outbox/`, and a log line.
- Failures: SMTP down or refusing (451, 550) retries on `EMAIL_RETRY_INTERVALS`; a server that comes
  back gets the message exactly once; after the last attempt the delivery is `failed` with its error
  and a `system.alert` reaches an admin's SSE stream. A worker SIGKILLed while the server sits on
  the DATA reply leads to exactly one accepted copy.

What "accepted" means: an SMTP server has accepted a message when it answers 250 to the end of
DATA. The sink records the outcome of every transfer; when the client vanishes while the sink is
stalling before its reply, aiosmtpd cancels the handler, so that transfer is recorded as
`abandoned` — the bytes arrived, but no 250 was ever given and the sender rightly sends again.
(A real MTA that had already committed such a message would deliver it twice; no SMTP client can
prevent that — RFC 1047 — so the honest assertion is "exactly one 250 per Message-ID".)

Every wait is bounded; every process and sink is stopped at teardown.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest
import redis
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from conftest import (
    Actor,
    Server,
    assert_problem,
    at,
    bookwire,
    bookwire_env,
    make_resource,
    register,
    running_api,
    sign_in_admin,
)
from sse import SSEStream, open_stream

from app.embedded_redis import EmbeddedRedis, free_port

T = TypeVar("T")

APP_URL = "https://app.example.test"
TIMEZONE = "Asia/Tokyo"
RETRY_INTERVALS = "1s,2s,4s"  # room for a loaded machine between attempts
ATTEMPTS = 4  # the first attempt and one retry per interval
TEMPLATE_KEYS = {
    "booking.created.customer", "booking.created.owner", "booking.confirmed.customer",
    "booking.rejected.customer", "booking.cancelled.customer", "booking.cancelled.owner",
    "booking.rescheduled.customer", "booking.rescheduled.owner", "booking.completed.customer",
    "booking.expired.customer", "booking.reassigned.customer", "booking.reassigned.owner", "reminder.owner",
    "reminder.customer", "message.unread",
}
PARTS = ("subject", "text", "html")
POLL_SECONDS = 0.2
MESSAGE_ID = re.compile(r"^<[^<>@\s]+@[^<>@\s]+>$")


# --- the SMTP sink ----------------------------------------------------------------------------------------


@dataclass
class Transfer:
    """One message as it crossed the wire (end of DATA), and what the sink answered."""

    message_id: str
    raw: bytes
    rcpt_tos: list[str]
    at: float
    outcome: str = "pending"  # the reply ("250 OK", "451 ..."), or "abandoned" when the client went away first
    peer: Any = None  # the client's (address, port): one per SMTP connection
    ended: float = 0.0  # when the sink replied or saw the client go

    @property
    def accepted(self) -> bool:
        return self.outcome.startswith("250")

    def message(self) -> EmailMessage:
        parsed: EmailMessage = message_from_bytes(self.raw, policy=policy.default)  # type: ignore[assignment]
        return parsed


class SinkHandler:
    """aiosmtpd handler: `reply(n)` answers the n-th transfer of one Message-ID after `stall(n)` seconds."""

    def __init__(self, reply: Callable[[int], str] | None = None, stall: Callable[[int], float] | None = None) -> None:
        self.reply = reply or (lambda attempt: "250 OK")
        self.stall = stall or (lambda attempt: 0.0)
        self.transfers: list[Transfer] = []
        self.stalling = threading.Event()
        self._lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = bytes(envelope.original_content or b"")
        message_id = str(message_from_bytes(raw, policy=policy.default)["Message-ID"] or "")
        with self._lock:
            attempt = 1 + sum(t.message_id == message_id for t in self.transfers)
            transfer = Transfer(message_id, raw, [str(r) for r in envelope.rcpt_tos], time.monotonic(),
                                peer=session.peer)
            self.transfers.append(transfer)
        delay = self.stall(attempt)
        if delay:
            self.stalling.set()
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:  # aiosmtpd cancels the handler when the client disconnects
                transfer.outcome, transfer.ended = "abandoned", time.monotonic()
                raise
        transfer.outcome, transfer.ended = self.reply(attempt), time.monotonic()
        return transfer.outcome

    def snapshot(self) -> list[Transfer]:
        with self._lock:
            return list(self.transfers)

    def accepted(self, message_id: str | None = None) -> list[Transfer]:
        return [t for t in self.snapshot() if t.accepted and message_id in (None, t.message_id)]


class Sink:
    """An SMTP server on 127.0.0.1:`port` (chosen now, so workers can point at it before it listens);
    `options` go to aiosmtpd's SMTP (e.g. `timeout`: seconds before it drops an idle client)."""

    def __init__(self, handler: SinkHandler, **options: Any) -> None:
        self.handler = handler
        self.options = options
        self.port = free_port()
        self.controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, **self.options)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


# --- processes --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server for this module only: other tests' jobs never reach these workers."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("email-redis"), persist=False)
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


def log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else f"(no {path})"


@dataclass
class Stack:
    """The processes and sinks of one test, all stopped at teardown."""

    data_dir: Path
    redis_url: str
    base_url: str = ""
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sinks: list[Sink] = field(default_factory=list)
    contexts: ExitStack = field(default_factory=ExitStack)

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'bookwire.sqlite3'}"

    def settings(self, sink: Sink | None, **extra: str) -> dict[str, str]:
        """Email settings shared by the API, workers and scheduler (SMTP_HOST empty: simulation mode)."""
        smtp = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(sink.port)} if sink else {"SMTP_HOST": ""}
        return {"APP_URL": APP_URL, "SMTP_STARTTLS": "false", "SMTP_USERNAME": "", "SMTP_PASSWORD": "",
                "EMAIL_RETRY_INTERVALS": RETRY_INTERVALS, "EMAIL_SEND_TIMEOUT": "30s", **smtp, **extra}

    def sink(self, handler: SinkHandler | None = None, listen: bool = True, **options: Any) -> Sink:
        sink = Sink(handler or SinkHandler(), **options)
        self.sinks.append(sink)
        if listen:
            sink.start()
        return sink

    def api(self, settings: dict[str, str]) -> tuple[Server, Actor]:
        """Start the API (after migrations); the server and its bootstrapped admin."""
        self.base_url, _ = self.contexts.enter_context(running_api(self.data_dir, self.redis_url, **settings))
        server = Server("sqlite", self.base_url, self.database_url, self.data_dir)
        return server, sign_in_admin(server)

    def start(self, command: str, settings: dict[str, str], log: str) -> subprocess.Popen[bytes]:
        """`bookwire worker|scheduler` on this test's Redis and database."""
        env = bookwire_env(DATABASE_URL=self.database_url, REDIS_URL=self.redis_url, DATA_DIR=str(self.data_dir),
                           **settings)
        process = bookwire(command, env=env, log=self.data_dir / log)
        self.processes.append(process)
        return process

    def logs(self) -> str:
        names = sorted(p.name for p in self.data_dir.glob("*.log"))
        return "\n".join(f"--- {name} (tail)\n{log_tail(self.data_dir / name)}" for name in names)

    def stop(self) -> None:
        """Workers and scheduler first (SIGTERM, then SIGKILL after 15 s), then the API, then the sinks."""
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        self.contexts.close()
        for sink in self.sinks:
            sink.stop()


@pytest.fixture
def stack(module_redis: str, tmp_path: Path) -> Iterator[Stack]:
    """An empty Redis (the module's) and a fresh data folder; everything started through it is stopped after."""
    client = redis.Redis.from_url(module_redis)
    try:
        client.flushall()
    finally:
        client.close()
    started = Stack(tmp_path, module_redis)
    try:
        yield started
    finally:
        started.stop()


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (an RQ worker forks a work horse per job), read from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def sigkill_tree(process: subprocess.Popen[bytes]) -> list[int]:
    """SIGKILL a worker and its work horses at once, as a crashed machine would; the pids killed."""
    victims = [process.pid, *descendants(process.pid)]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(timeout=10)
    return victims


# --- HTTP helpers -----------------------------------------------------------------------------------------


def eventually(check: Callable[[], T | None], timeout: float, what: str, stack: Stack) -> T:
    """Poll `check` every 0.2 s until it returns something truthy; fail with the logs after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s\n{stack.logs()}")
        time.sleep(POLL_SECONDS)


def deliveries(admin: Actor, booking_id: str) -> list[dict[str, Any]]:
    answer = admin.http.get("/v1/admin/emails", params={"booking_id": booking_id, "limit": 100})
    assert answer.status_code == 200, answer.text
    items: list[dict[str, Any]] = answer.json()["items"]
    return items


def settled(admin: Actor, booking_ids: list[str], count: int) -> Callable[[], list[dict[str, Any]] | None]:
    """A check for `eventually`: the deliveries of these bookings once there are `count`, all `sent`."""

    def check() -> list[dict[str, Any]] | None:
        items = [d for booking_id in booking_ids for d in deliveries(admin, booking_id)]
        return items if len(items) == count and all(d["status"] == "sent" for d in items) else None

    return check


def act(actor: Actor, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[dict[str, Any], float]:
    """One booking request; its answer and how long it took."""
    started = time.monotonic()
    answer = actor.http.request(method, path, json=body or {})
    elapsed = time.monotonic() - started
    assert answer.status_code in (200, 201), f"{method} {path}: {answer.status_code} {answer.text}"
    result: dict[str, Any] = answer.json()
    return result, elapsed


def book(customer: Actor, resource_id: str, start_hours: float) -> dict[str, Any]:
    body, _ = act(customer, "POST", "/v1/bookings",
                  {"resource_id": resource_id, "starts_at": at(start_hours), "ends_at": at(start_hours + 1)})
    return body


def body_parts(message: EmailMessage) -> tuple[str, str]:
    """The text and HTML alternatives of a multipart/alternative message."""
    assert message.get_content_type() == "multipart/alternative", message.get_content_type()
    kinds = [part.get_content_type() for part in message.iter_parts()]
    assert kinds == ["text/plain", "text/html"], kinds
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())


def local_forms(moment: datetime) -> tuple[str, list[str]]:
    """The wall-clock time (HH:MM) and the usual spellings of the date of `moment` in its zone."""
    day = moment.day
    dates = [f"{moment:%Y-%m-%d}", f"{day} {moment:%b}", f"{moment:%b} {day}", f"{day} {moment:%B}",
             f"{moment:%B} {day}", f"{moment:%d/%m/%Y}", f"{moment:%m/%d/%Y}", f"{moment:%Y/%m/%d}"]
    return f"{moment:%H:%M}", dates


def check_booking_email(message: EmailMessage, delivery: dict[str, Any], booking: dict[str, Any],
                        resource: dict[str, Any], to_address: str) -> None:
    """The spec's content rules for one booking email (SPEC "Email")."""
    what = f"{delivery['template_key']} for booking {booking['id']}"
    assert MESSAGE_ID.match(str(message["Message-ID"] or "")), f"{what}: Message-ID {message['Message-ID']!r}"
    assert message["Message-ID"] == delivery["message_id"], what
    assert to_address in str(message["To"]), f"{what}: To {message['To']!r}, expected {to_address}"
    assert message["From"] and message["Date"] and str(message["Subject"]).strip(), what
    text, html = body_parts(message)
    start = datetime.fromisoformat(booking["starts_at"]).astimezone(ZoneInfo(resource["timezone"]))
    clock, dates = local_forms(start)
    link = f"{APP_URL}/bookings/{booking['id']}"
    for name, content in (("text", text), ("html", html)):
        assert resource["name"] in content, f"{what}: the {name} part does not name the resource"
        assert booking["id"] in content, f"{what}: the {name} part lacks the booking id"
        assert link in content, f"{what}: the {name} part lacks {link}"
        assert clock in content and any(d in content for d in dates), (
            f"{what}: the {name} part lacks the start in {resource['timezone']} ({start:%Y-%m-%d %H:%M}):\n{content}")


# --- SSE ----------------------------------------------------------------------------------------------------


class AdminStream:
    """An admin's open `GET /v1/events/stream`, read on demand from its own event loop."""

    def __init__(self, base_url: str, admin: Actor) -> None:
        self.loop = asyncio.new_event_loop()
        self.stream: SSEStream = self.loop.run_until_complete(
            open_stream(f"{base_url}/v1/events/stream", {"Authorization": f"Bearer {admin.token}"}))
        assert self.stream.status == 200, self.stream.body

    def alerts_for(self, delivery_ids: set[str], timeout: float) -> dict[str, dict[str, Any]]:
        """The `system.alert` envelopes naming each of `delivery_ids`, as far as they came within `timeout`."""

        async def collect() -> dict[str, dict[str, Any]]:
            found: dict[str, dict[str, Any]] = {}
            deadline = time.monotonic() + timeout
            while set(found) != delivery_ids and (left := deadline - time.monotonic()) > 0:
                try:
                    event = await self.stream.next(timeout=left)
                except TimeoutError:
                    break
                if event is None:
                    break
                if event.event == "system.alert":
                    envelope = event.envelope
                    found.update({d: envelope for d in delivery_ids if d in json.dumps(envelope["data"])})
            return found

        return self.loop.run_until_complete(collect())

    def close(self) -> None:
        self.stream.close()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()


# --- the cast ---------------------------------------------------------------------------------------------


@dataclass
class Story:
    server: Server
    admin: Actor
    customer: Actor
    owner: Actor
    resource: dict[str, Any]


def open_shop(stack: Stack, settings: dict[str, str]) -> Story:
    """Start the API; an admin, a customer, a provider and the provider's resource in Tokyo."""
    server, admin = stack.api(settings)
    customer = register(server, "customer", "Carol Customer")
    owner = register(server, "provider", "Paula Provider")
    resource = make_resource(owner, name="Tokyo Tea Room", timezone=TIMEZONE, requires_confirmation=True)
    return Story(server, admin, customer, owner, resource)


def recipient(story: Story, template_key: str) -> str:
    return story.owner.email if template_key.endswith(".owner") else story.customer.email


# --- 1. status changes ------------------------------------------------------------------------------------


def test_every_status_change_mails_the_right_people_from_a_worker(stack: Stack) -> None:
    sink = stack.sink()
    settings = stack.settings(sink)  # the API could reach the sink too: it must not
    story = open_shop(stack, settings)
    customer, owner, rid = story.customer, story.owner, story.resource["id"]
    snapshots: dict[tuple[str, str], dict[str, Any]] = {}  # (booking id, event) -> the booking after it
    timings: list[float] = []

    def step(actor: Actor, method: str, path: str, event: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        booking, elapsed = act(actor, method, path, body)
        timings.append(elapsed)
        snapshots[(booking["id"], event)] = booking
        return booking

    # No worker is running yet: every change answers at once and only queues its emails.
    a = step(customer, "POST", "/v1/bookings", "created",
             {"resource_id": rid, "starts_at": at(30), "ends_at": at(31)})
    step(owner, "POST", f"/v1/bookings/{a['id']}/confirm", "confirmed")
    step(customer, "PATCH", f"/v1/bookings/{a['id']}", "rescheduled", {"starts_at": at(42), "ends_at": at(43)})
    step(owner, "POST", f"/v1/bookings/{a['id']}/check-in", "checked_in")
    step(owner, "POST", f"/v1/bookings/{a['id']}/complete", "completed")
    b = step(customer, "POST", "/v1/bookings", "created", {"resource_id": rid, "starts_at": at(33), "ends_at": at(34)})
    step(owner, "POST", f"/v1/bookings/{b['id']}/reject", "rejected", {"reason": "Closed that day"})
    c = step(customer, "POST", "/v1/bookings", "created", {"resource_id": rid, "starts_at": at(36), "ends_at": at(37)})
    step(customer, "POST", f"/v1/bookings/{c['id']}/cancel", "cancelled", {"reason": "Plans changed"})
    expected = {
        a["id"]: {"booking.created.customer", "booking.created.owner", "booking.confirmed.customer",
                  "booking.rescheduled.customer", "booking.rescheduled.owner", "booking.completed.customer"},
        b["id"]: {"booking.created.customer", "booking.created.owner", "booking.rejected.customer"},
        c["id"]: {"booking.created.customer", "booking.created.owner", "booking.cancelled.customer",
                  "booking.cancelled.owner"},
    }
    assert max(timings) < 2.0, f"booking requests took up to {max(timings):.2f} s without a worker"
    time.sleep(0.5)  # give a request-path send every chance to show up
    for booking_id, keys in expected.items():
        items = deliveries(story.admin, booking_id)
        assert {d["template_key"] for d in items} == keys and len(items) == len(keys), items
        assert all(d["status"] == "queued" and d["attempts"] == 0 for d in items), items
    assert sink.handler.snapshot() == [], "an email reached SMTP with no worker running"

    stack.start("worker", settings, "worker.log")
    total = sum(len(keys) for keys in expected.values())
    items = eventually(settled(story.admin, list(expected), total), 20, "every email sent", stack)
    by_message_id = {d["message_id"]: d for d in items}
    transfers = sink.handler.snapshot()
    assert sorted(t.message_id for t in transfers) == sorted(by_message_id), "one copy of each email, nothing else"
    assert all(t.accepted for t in transfers), [t.outcome for t in transfers]
    subjects: dict[tuple[str, str], list[str]] = {}
    for transfer in transfers:
        delivery = by_message_id[transfer.message_id]
        key, booking_id = delivery["template_key"], delivery["booking_id"]
        event = key.split(".")[1]
        to_address = recipient(story, key)
        assert transfer.rcpt_tos == [to_address], (key, transfer.rcpt_tos)
        message = transfer.message()
        check_booking_email(message, delivery, snapshots[(booking_id, event)], story.resource, to_address)
        subjects.setdefault((booking_id, to_address), []).append(str(message["Subject"]))
    for (booking_id, to_address), seen in subjects.items():
        assert len(set(seen)) == len(seen), f"{to_address} cannot tell the emails of {booking_id} apart: {seen}"


# --- 2. templates -------------------------------------------------------------------------------------------


def test_admin_templates_override_preview_reset_and_refusals(stack: Stack) -> None:
    sink = stack.sink()
    settings = stack.settings(sink)
    story = open_shop(stack, settings)
    admin, key = story.admin.http, "booking.created.customer"
    stack.start("worker", settings, "worker.log")

    listed = admin.get("/v1/admin/email-templates")
    assert listed.status_code == 200, listed.text
    assert listed.json()["next_cursor"] is None, listed.json()  # 13 keys fit the default page of 50
    defaults = {t["key"]: t for t in listed.json()["items"]}
    assert set(defaults) == TEMPLATE_KEYS and len(listed.json()["items"]) == len(TEMPLATE_KEYS), sorted(defaults)
    for template in defaults.values():
        assert template["is_default"] is True and template["subject"].strip() and template["text"].strip(), template
        assert template["html"].strip(), template
    assert admin.get(f"/v1/admin/email-templates/{key}").json() == defaults[key]

    # Not an admin: 403 everywhere, and nothing changes.
    override = {"subject": "Custom {{ resource.name }} / {{ booking.id }}",
                "text": "OVERRIDE-TEXT {{ resource.name }} {{ booking.starts_at_local }} {{ link }}",
                "html": '<p>OVERRIDE-HTML {{ resource.name }} <a href="{{ link }}">{{ booking.id }}</a></p>'}
    for actor in (story.customer, story.owner):
        for method, path, body in (("GET", "/v1/admin/email-templates", None),
                                   ("GET", f"/v1/admin/email-templates/{key}", None),
                                   ("PUT", f"/v1/admin/email-templates/{key}", override),
                                   ("DELETE", f"/v1/admin/email-templates/{key}", None),
                                   ("POST", f"/v1/admin/email-templates/{key}/preview", {}),
                                   ("GET", "/v1/admin/emails", None)):
            assert_problem(actor.http.request(method, path, json=body), 403)
    # Unknown key: 404.
    for method, path, body in (("GET", "/v1/admin/email-templates/booking.nope", None),
                               ("PUT", "/v1/admin/email-templates/booking.nope", override),
                               ("DELETE", "/v1/admin/email-templates/booking.nope", None),
                               ("POST", "/v1/admin/email-templates/booking.nope/preview", {})):
        assert_problem(admin.request(method, path, json=body), 404)
    assert admin.get(f"/v1/admin/email-templates/{key}").json() == defaults[key], "a refused PUT stored something"

    # Override: stored, listed, previewed, used by the next email.
    saved = admin.put(f"/v1/admin/email-templates/{key}", json=override)
    assert saved.status_code == 200, saved.text
    assert saved.json()["is_default"] is False and saved.json()["updated_at"], saved.json()
    fetched = admin.get(f"/v1/admin/email-templates/{key}").json()
    assert {p: fetched[p] for p in PARTS} == override and fetched["is_default"] is False, fetched
    listed_now = admin.get("/v1/admin/email-templates").json()["items"]
    assert {t["key"] for t in listed_now if not t["is_default"]} == {key}
    preview = admin.post(f"/v1/admin/email-templates/{key}/preview")
    assert preview.status_code == 200, preview.text
    assert preview.json()["subject"].startswith("Custom ") and "OVERRIDE-TEXT" in preview.json()["text"]
    assert "OVERRIDE-HTML" in preview.json()["html"], preview.json()
    assert admin.post(f"/v1/admin/email-templates/{key}/preview", json={}).json() == preview.json()
    custom = admin.post(f"/v1/admin/email-templates/{key}/preview",
                        json={"context": {"resource": {"name": "Tea & <Cakes>"}}})
    assert custom.status_code == 200, custom.text
    shown = custom.json()
    assert shown["subject"].startswith("Custom Tea & <Cakes> / "), shown
    assert "OVERRIDE-TEXT Tea & <Cakes>" in shown["text"], shown
    assert "Tea &amp; &lt;Cakes&gt;" in shown["html"] and "<Cakes>" not in shown["html"], "HTML is not escaped"
    missing = admin.post(f"/v1/admin/email-templates/{key}/preview", json={"context": {"resource": {"id": "x"}}})
    problem = assert_problem(missing, 422)
    assert problem["errors"][0]["field"].split(".")[-1] in PARTS, problem
    default_preview = admin.post("/v1/admin/email-templates/booking.confirmed.customer/preview")
    assert default_preview.status_code == 200 and all(default_preview.json()[p] for p in PARTS), default_preview.text

    first = book(story.customer, story.resource["id"], 30)
    items = eventually(settled(story.admin, [first["id"]], 2), 20, "the created emails sent", stack)
    ids = {d["template_key"]: d["message_id"] for d in items}
    custom_mail = sink.handler.accepted(ids[key])[0].message()
    assert custom_mail["Subject"] == f"Custom {story.resource['name']} / {first['id']}", custom_mail["Subject"]
    custom_text, custom_html = body_parts(custom_mail)
    assert "OVERRIDE-TEXT" in custom_text and "OVERRIDE-HTML" in custom_html
    owner_mail = sink.handler.accepted(ids["booking.created.owner"])[0].message()
    assert "OVERRIDE" not in owner_mail.as_string(), "the override leaked into another key"

    # Refused saves say why, and store nothing (neither over the override nor over a default).
    refusals = [
        ("subject", {**override, "subject": "Hi {{ no_such_variable }}"}, ("no_such_variable", "undefined")),
        ("text", {**override, "text": "{{ booking.no_such_field }}"}, ("no_such_field",)),
        ("html", {**override, "html": "<p>{{ no_such_variable }}</p>"}, ("no_such_variable", "undefined")),
        ("text", {**override, "text": "{{ ''.__class__.__mro__ }}"}, ("unsafe",)),
        ("html", {**override, "html": "{{ booking.__class__ }}"}, ("unsafe",)),
        ("subject", {**override, "subject": "{{ resource.name.__class__.__base__.__subclasses__() }}"}, ("unsafe",)),
        ("text", {**override, "text": "{{ cycler.__init__.__globals__ }}"}, ("unsafe",)),
        ("text", {**override, "text": "{% for c in ''.__class__.__mro__[1].__subclasses__() %}{{ c }}{% endfor %}"},
         ("unsafe",)),
    ]
    for target in (key, "booking.confirmed.customer"):
        before = admin.get(f"/v1/admin/email-templates/{target}").json()
        for part, body, words in refusals:
            problem = assert_problem(admin.put(f"/v1/admin/email-templates/{target}", json=body), 422)
            errors = problem.get("errors") or []
            assert errors and errors[0]["field"].split(".")[-1] == part, (part, problem)
            message = f"{errors[0]['message']} {problem['detail']}".lower()
            assert any(word in message for word in words), f"the 422 does not say why ({words}): {problem}"
        assert admin.get(f"/v1/admin/email-templates/{target}").json() == before, f"a refused PUT changed {target}"

    # DELETE: back to the default, for GET and for the next email.
    reset = admin.delete(f"/v1/admin/email-templates/{key}")
    assert reset.status_code in (200, 204), reset.text
    assert admin.get(f"/v1/admin/email-templates/{key}").json() == defaults[key]
    second = book(story.customer, story.resource["id"], 33)
    items = eventually(settled(story.admin, [second["id"]], 2), 20, "the second created emails sent", stack)
    message_id = next(d["message_id"] for d in items if d["template_key"] == key)
    default_mail = sink.handler.accepted(message_id)[0].message()
    assert "OVERRIDE" not in default_mail.as_string() and not str(default_mail["Subject"]).startswith("Custom")
    check_booking_email(default_mail, next(d for d in items if d["template_key"] == key), second, story.resource,
                        story.customer.email)


# --- 3. simulation mode -----------------------------------------------------------------------------------


def simulate(stack: Stack) -> tuple[Story, dict[str, Any], list[dict[str, Any]], list[Path]]:
    """API and worker with SMTP_HOST unset, one booking: the story, the booking, its deliveries, the outbox."""
    settings = stack.settings(None)
    story = open_shop(stack, settings)
    stack.start("worker", settings, "worker.log")
    booking = book(story.customer, story.resource["id"], 30)
    items = eventually(settled(story.admin, [booking["id"]], 2), 20, "both created emails written", stack)
    outbox = stack.data_dir / "outbox"
    return story, booking, items, sorted(outbox.iterdir()) if outbox.is_dir() else []


def test_simulation_mode_writes_and_logs_each_message(stack: Stack) -> None:
    """SPEC: simulation mode "writes each message as an `.eml` file into `$DATA_DIR/outbox/` and logs it"
    (one run of the processes for both halves)."""
    story, booking, items, files = simulate(stack)
    assert [f.suffix for f in files] == [".eml"] * len(items), f"one .eml per message, nothing else: {files}"
    by_message_id = {d["message_id"]: d for d in items}
    seen = set()
    for path in files:
        message: EmailMessage = message_from_bytes(path.read_bytes(), policy=policy.default)  # type: ignore[assignment]
        delivery = by_message_id[str(message["Message-ID"])]
        seen.add(delivery["message_id"])
        check_booking_email(message, delivery, booking, story.resource, recipient(story, delivery["template_key"]))
    assert seen == set(by_message_id)
    log = (stack.data_dir / "worker.log").read_text(errors="replace")
    unlogged = [path.name for path in files if path.name not in log]
    assert not unlogged, f"worker.log never names {unlogged}:\n{log_tail(stack.data_dir / 'worker.log')}"


# --- 4. failures ------------------------------------------------------------------------------------------


def watch(admin: Actor, booking_id: str, history: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The deliveries of a booking now, also appended to `history`."""
    items = deliveries(admin, booking_id)
    history.append(items)
    return items


def attempts_grew(history: list[list[dict[str, Any]]], message_id: str) -> list[int]:
    """The attempt counts a delivery went through, checked never to go down."""
    counts = [d["attempts"] for items in history for d in items if d["message_id"] == message_id]
    assert counts == sorted(counts), f"attempts went down: {counts}"
    return sorted(set(counts))


def test_smtp_down_then_back_sends_exactly_once(stack: Stack) -> None:
    sink = stack.sink(listen=False)  # nothing listens on its port yet
    settings = stack.settings(sink)
    story = open_shop(stack, settings)
    stack.start("scheduler", settings, "scheduler.log")
    stack.start("worker", settings, "worker.log")
    booking = book(story.customer, story.resource["id"], 30)
    history: list[list[dict[str, Any]]] = []

    def retried_twice() -> list[dict[str, Any]] | None:
        items = watch(story.admin, booking["id"], history)
        done = len(items) == 2 and all(d["status"] == "queued" and d["attempts"] >= 2 and d["last_error"]
                                       for d in items)
        return items if done else None

    failing = eventually(retried_twice, 10, "two failed attempts while SMTP is down", stack)
    assert all(d["attempts"] < ATTEMPTS for d in failing), f"the sink came up too late for this test: {failing}"
    for delivery in failing:
        assert "refused" in delivery["last_error"].lower(), delivery["last_error"]
    sink.start()
    items = eventually(settled(story.admin, [booking["id"]], 2), 15, "sent once SMTP is back", stack)
    time.sleep(2.5)  # past the last scheduled attempt: a stray retry would arrive now
    for delivery in items:
        grown = attempts_grew(history, delivery["message_id"])
        assert len(grown) >= 2 and grown[-1] >= 2, grown
        assert delivery["attempts"] in (3, 4), delivery
        copies = [t for t in sink.handler.snapshot() if t.message_id == delivery["message_id"]]
        assert [t.outcome for t in copies] == ["250 OK"], f"{delivery['template_key']}: {copies}"
    assert len(sink.handler.snapshot()) == 2, "exactly one copy of each message"


def test_smtp_refusing_then_accepting_retries_on_the_intervals_and_sends_once(stack: Stack) -> None:
    refusals = ATTEMPTS - 1  # "451 try later" until the last attempt, which the server accepts
    sink = stack.sink(SinkHandler(reply=lambda attempt: "451 try later" if attempt <= refusals else "250 OK"))
    settings = stack.settings(sink)
    story = open_shop(stack, settings)
    stack.start("scheduler", settings, "scheduler.log")
    stack.start("worker", settings, "worker.log")
    booking = book(story.customer, story.resource["id"], 30)
    history: list[list[dict[str, Any]]] = []

    def refused_once() -> list[dict[str, Any]] | None:
        items = watch(story.admin, booking["id"], history)
        return items if len(items) == 2 and all(d["last_error"] for d in items) else None

    for delivery in eventually(refused_once, 10, "a recorded 451", stack):
        assert "451" in delivery["last_error"], delivery["last_error"]
    items = eventually(settled(story.admin, [booking["id"]], 2), 20, "sent on the last attempt", stack)
    time.sleep(1.0)
    gaps = [1.0, 1.0, 2.0]
    for delivery in items:
        assert delivery["attempts"] == ATTEMPTS, delivery
        assert len(attempts_grew(history, delivery["message_id"])) >= 2
        copies = [t for t in sink.handler.snapshot() if t.message_id == delivery["message_id"]]
        assert [t.outcome for t in copies] == ["451 try later"] * refusals + ["250 OK"], copies
        waited = [later.at - earlier.at for earlier, later in pairwise(copies)]
        assert all(w >= gap - 0.25 for w, gap in zip(waited, gaps, strict=True)), (
            f"retries did not wait EMAIL_RETRY_INTERVALS={RETRY_INTERVALS}: {waited}")


@pytest.mark.parametrize("server_state", ["down", "refusing"])
def test_last_attempt_fails_for_good_and_alerts_admins(stack: Stack, server_state: str) -> None:
    handler = SinkHandler(reply=lambda attempt: "550 rejected")
    sink = stack.sink(handler, listen=server_state == "refusing")
    settings = stack.settings(sink)
    story = open_shop(stack, settings)
    stream = AdminStream(stack.base_url, story.admin)
    try:
        stack.start("scheduler", settings, "scheduler.log")
        stack.start("worker", settings, "worker.log")
        booking = book(story.customer, story.resource["id"], 30)
        history: list[list[dict[str, Any]]] = []

        def failed() -> list[dict[str, Any]] | None:
            items = watch(story.admin, booking["id"], history)
            return items if len(items) == 2 and all(d["status"] == "failed" for d in items) else None

        items = eventually(failed, 20, "failed after the last attempt", stack)
        expected_error = "refused" if server_state == "down" else "550"
        for delivery in items:
            assert delivery["attempts"] == ATTEMPTS, delivery
            assert expected_error in (delivery["last_error"] or "").lower(), delivery
            assert len(attempts_grew(history, delivery["message_id"])) >= 2, "attempts were not seen growing"
        listed = story.admin.http.get("/v1/admin/emails", params={"status": "failed"}).json()["items"]
        assert {d["id"] for d in listed} == {d["id"] for d in items}, listed
        alerts = stream.alerts_for({d["id"] for d in items}, timeout=10)
        assert set(alerts) == {d["id"] for d in items}, f"system.alert per failed delivery: {alerts}\n{stack.logs()}"
        for envelope in alerts.values():
            assert envelope["type"] == "system.alert" and envelope["channel"] == "role:admin", envelope
        if server_state == "refusing":
            assert len(handler.snapshot()) == 2 * ATTEMPTS and not handler.accepted(), handler.snapshot()
    finally:
        stream.close()


def test_worker_killed_mid_send_leads_to_exactly_one_accepted_copy(stack: Stack) -> None:
    stalled_once = threading.Event()

    def stall(attempt: int) -> float:
        """The very first transfer waits before its DATA reply, far longer than the kill takes."""
        if stalled_once.is_set():
            return 0.0
        stalled_once.set()
        return 30.0

    handler = SinkHandler(stall=stall)
    sink = stack.sink(handler)
    # The send timeout is also the client's SMTP timeout: kill well before. The sweep every 2 s (not the
    # default 10 s) brings the resend sooner.
    settings = stack.settings(sink, EMAIL_SEND_TIMEOUT="2s", SWEEP_INTERVAL="2s")
    story = open_shop(stack, settings)
    stack.start("scheduler", settings, "scheduler.log")
    worker = stack.start("worker", settings, "worker.log")
    booking = book(story.customer, story.resource["id"], 30)
    assert handler.stalling.wait(timeout=15), f"no message reached the sink\n{stack.logs()}"
    killed = sigkill_tree(worker)
    assert killed, "expected to kill the worker (and its work horse, if it forks one)"
    stalled = handler.snapshot()[0]

    def abandoned() -> Transfer | None:
        return stalled if stalled.outcome == "abandoned" else None

    eventually(abandoned, 5, "the sink seeing the killed client go", stack)
    assert stalled.ended - stalled.at < 1.5, "the client left on its own timeout, not because it was killed"
    stack.start("worker", settings, "worker-2.log")
    # The claim expires EMAIL_SEND_TIMEOUT + 5 s after it was taken; the sweep runs every 2 s.
    items = eventually(settled(story.admin, [booking["id"]], 2), 35, "sent after the worker was killed", stack)
    time.sleep(1.0)
    for delivery in items:
        copies = [t for t in handler.snapshot() if t.message_id == delivery["message_id"]]
        accepted = [t for t in copies if t.accepted]
        assert len(accepted) == 1, f"{delivery['template_key']}: {[t.outcome for t in copies]}"
        check_booking_email(accepted[0].message(), delivery, booking, story.resource,
                            recipient(story, delivery["template_key"]))
    outcomes = {d["template_key"]: [t.outcome for t in handler.snapshot() if t.message_id == d["message_id"]]
                for d in items}
    stalled_key = next(d["template_key"] for d in items if d["message_id"] == stalled.message_id)
    assert outcomes[stalled_key] == ["abandoned", "250 OK"], outcomes
    assert all(o == ["250 OK"] for k, o in outcomes.items() if k != stalled_key), outcomes
