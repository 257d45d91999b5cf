"""Reminders and response deadlines with real processes (SPEC "Reminders", "Bookings", "Events").

Every test runs `bookwire api`, RQ workers (`bookwire worker`) and rq-scheduler (`bookwire scheduler`)
on SQLite and a private Redis of its own (never the session one), with SMTP_HOST unset so that mail
lands as `.eml` files in `$DATA_DIR/outbox/`. Offsets are seconds, bookings start seconds ahead,
and everything is driven over HTTP as a user would, watched over SSE:

- confirmation schedules reminders at the configured offsets (skipping past ones); each fires within
  2 s of its due time, once, with two workers and two schedulers running, as a `reminder.due` event on
  the recipient's own channel only, an in-app notification and an email with the app link;
- reschedule moves them; cancel, check-in and complete remove the unfired ones; a booking cancelled
  just before (or at) a due time is not reminded afterwards;
- a pending booking left unanswered past its resource's response deadline expires within 2 s, frees
  its seats, publishes `booking.expired` and mails the customer; a confirmed one does not expire;
- scheduled reminders and deadlines survive stopping every process, Redis included (also with
  `bookwire up`, whose embedded Redis keeps its AOF in DATA_DIR);
- the same firing path with the API, a worker and the scheduler on PostgreSQL;
- the cleanup job trims event history past STREAM_RETENTION and deletes fired reminders and read
  notifications older than 30 days.

Measured lateness is printed (run with `-s` to see it). Every wait is bounded and every process is
stopped in `finally` blocks.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from conftest import (
    Actor,
    Server,
    bookwire,
    bookwire_env,
    fresh_database,
    make_resource,
    register,
    running_api,
    sign_in_admin,
    wait_for_http,
)
from events import outbox_settled
from redis import Redis
from rq import Queue
from rq.job import Job
from sse import SSEEvent, SSEStream, open_stream

from app.bookings.reminders import REMINDER_BATCH
from app.embedded_redis import EmbeddedRedis, free_port

T = TypeVar("T")

APP_URL = "https://bookwire.example.test"
LATENESS_LIMIT = 2.0  # SPEC: a reminder fires, a deadline expires, within 2 s of its due time
PROVIDER_OFFSETS = "30s,6s,4s"  # 30s is already past for bookings starting ~12 s ahead: it must be skipped
CUSTOMER_OFFSETS = "5s"
REMINDER_FIELDS = {"id", "recipient_id", "recipient_role", "offset_seconds", "due_at", "status", "fired_at"}
SCHEDULED_JOBS_KEY = "rq:scheduler:scheduled_jobs"
QUIET_SECONDS = 2.0  # how long we keep watching after the last expected firing, for duplicates
RESTART_LEAD_SECONDS = 12  # reminders and deadlines due this far ahead when every process is stopped
FIRING_LEAD_SECONDS = 6  # the same, when nothing is stopped: only the recorders open before the first is due
RACE_STEPS = (0.0, 0.2, 0.4, 0.6, 0.8)  # cancels at and after a due time, across the scheduler's 0.5 s poll


# --- time ----------------------------------------------------------------------------------------------


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def seconds_ahead(seconds: float) -> datetime:
    """A whole-second moment `seconds` from now (so due times have no sub-second part)."""
    return (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0)


def sleep_until(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


def eventually(check: Callable[[], T | None], timeout: float, what: str,
               explain: Callable[[], str] | None = None, interval: float = 0.1) -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds saying `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.1f} s" + (f"\n{explain()}" if explain else ""))
        time.sleep(interval)


# --- processes -----------------------------------------------------------------------------------------


def log_tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return f"(no {path.name})"
    return f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def background(kind: str, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A `bookwire worker|scheduler` process, stopped (SIGTERM, then SIGKILL) on exit."""
    process = bookwire(kind, env=env, log=log)
    try:
        yield process
    finally:
        stop_process(process)


def wait_ready(process: subprocess.Popen[bytes], log: Path, marker: str) -> None:
    """Wait until a process's (fresh) log says `marker`."""
    def ready() -> bool:
        assert process.poll() is None, f"{log.name}: exited with {process.returncode}\n{log_tail(log)}"
        return log.exists() and marker in log.read_text(errors="replace")

    eventually(ready, 30, f"{log.name} ready", lambda: log_tail(log))


@dataclass
class Stack:
    """One API, its workers and schedulers, on one database and one Redis."""

    data_dir: Path
    redis_url: str
    base_url: str
    database_url: str
    logs: list[Path] = field(default_factory=list)

    @property
    def server(self) -> Server:
        engine = "sqlite" if self.database_url.startswith("sqlite") else "postgres"
        return Server(engine, self.base_url, self.database_url, self.data_dir)

    @property
    def outbox(self) -> Path:
        return self.data_dir / "outbox"

    def explain(self) -> str:
        return "\n".join(log_tail(path) for path in [self.data_dir / "api.log", *self.logs])


def settings_env(**extra: str) -> dict[str, str]:
    """Settings every process of a stack shares (no SMTP: simulation mode writes the outbox)."""
    return {"APP_URL": APP_URL, "SMTP_HOST": "", "REMINDER_PROVIDER_OFFSETS": PROVIDER_OFFSETS,
            "REMINDER_CUSTOMER_OFFSETS": CUSTOMER_OFFSETS, **extra}


@contextmanager
def bookwire_stack(data_dir: Path, redis_url: str, workers: int = 2, schedulers: int = 2, migrate: bool = True,
                   generation: int = 1, worker_env: dict[str, str] | None = None, database_url: str | None = None,
                   **env: str) -> Iterator[Stack]:
    """`bookwire api`, `workers` RQ workers and `schedulers` rq-schedulers (on SQLite in `data_dir`
    unless `database_url` says otherwise); all stopped on exit."""
    data_dir.mkdir(parents=True, exist_ok=True)
    shared = settings_env(**env)
    database_url = database_url or f"sqlite:///{data_dir / 'bookwire.sqlite3'}"
    with running_api(data_dir, redis_url, database_url, migrate=migrate, **shared) as (base_url, _), \
            ExitStack() as parts:
        stack = Stack(data_dir, redis_url, base_url, database_url)
        process_env = bookwire_env(DATABASE_URL=stack.database_url, REDIS_URL=redis_url, DATA_DIR=str(data_dir),
                                   **shared, **(worker_env or {}))
        started = []
        kinds = (("worker", workers, "Listening on"), ("scheduler", schedulers, "Registering birth"))
        for kind, count, marker in kinds:
            for number in range(1, count + 1):
                log = data_dir / f"{kind}-{number}.run{generation}.log"
                stack.logs.append(log)
                started.append((parts.enter_context(background(kind, process_env, log)), log, marker))
        for process, log, marker in started:  # all start at once, then each is waited for
            wait_ready(process, log, marker)
        yield stack


@contextmanager
def private_redis(data_dir: Path, port: int | None = None, persist: bool = False) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(data_dir, port=port, persist=persist)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def scheduled_job_ids(redis_url: str) -> set[str]:
    """The ids of the jobs rq-scheduler holds (its sorted set in Redis)."""
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        members: Any = client.zrange(SCHEDULED_JOBS_KEY, 0, -1)
        return set(members)
    finally:
        client.close()


def stream_ids(connection: Redis, key: str) -> list[str]:
    """The entry ids of a Redis stream, oldest first (none when the key is gone)."""
    rows: Any = connection.xrange(key)
    return [entry_id.decode() for entry_id, _ in rows]


# --- SSE -----------------------------------------------------------------------------------------------


@dataclass
class Received:
    at: datetime  # when the envelope arrived here
    envelope: dict[str, Any]


class Recorder:
    """Reads one user's SSE stream in a thread of its own and records every event with its arrival time."""

    def __init__(self, base_url: str, actor: Actor, last_event_id: str | None = None) -> None:
        self.url = f"{base_url}/v1/events/stream"
        self.headers = {"Authorization": f"Bearer {actor.token}"}
        if last_event_id:
            self.headers["Last-Event-ID"] = last_event_id
        self.actor = actor
        self.received: list[Received] = []
        self.error: BaseException | None = None
        self._opened = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the test through `error`
            self.error = exc
            self._opened.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        stream: SSEStream = await open_stream(self.url, self.headers)
        try:
            assert stream.status == 200, f"stream answered {stream.status}: {stream.body!r}"
            self._opened.set()
            while True:
                event: SSEEvent | None = await stream.next(timeout=3600)
                if event is None:
                    return
                if event.data:
                    self.received.append(Received(datetime.now(UTC), event.envelope))
        except asyncio.CancelledError:
            return
        finally:
            stream.close()

    def __enter__(self) -> Recorder:
        self._thread.start()
        if not self._opened.wait(10) or self.error:
            raise AssertionError(f"SSE stream of {self.actor.email} did not open: {self.error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._task is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(timeout=10)

    def of_type(self, event_type: str) -> list[Received]:
        return [r for r in list(self.received) if r.envelope["type"] == event_type]

    def reminders(self, reminder_id: str) -> list[Received]:
        return [r for r in self.of_type("reminder.due") if r.envelope["data"]["reminder"]["id"] == reminder_id]

    def booking_events(self, event_type: str, booking_id: str) -> list[Received]:
        return [r for r in self.of_type(event_type) if r.envelope["data"]["id"] == booking_id]


# --- HTTP helpers --------------------------------------------------------------------------------------


@dataclass
class People:
    customer: Actor
    other_customer: Actor
    owner: Actor
    admin: Actor


def cast_of(server: Server) -> People:
    return People(register(server, "customer", "Carol Customer"), register(server, "customer", "Oscar Other"),
                  register(server, "provider", "Paula Provider"), sign_in_admin(server))


def ok(answer: httpx.Response, status: int = 200) -> Any:
    assert answer.status_code == status, f"{answer.request.method} {answer.request.url}: {answer.status_code} " \
                                         f"{answer.text}"
    return answer.json()


def book(customer: Actor, resource_id: str, starts_at: datetime, minutes: int = 60) -> dict[str, Any]:
    body = {"resource_id": resource_id, "starts_at": starts_at.isoformat(),
            "ends_at": (starts_at + timedelta(minutes=minutes)).isoformat()}
    result: dict[str, Any] = ok(customer.http.post("/v1/bookings", json=body), 201)
    return result


def act(actor: Actor, booking_id: str, action: str) -> dict[str, Any]:
    result: dict[str, Any] = ok(actor.http.post(f"/v1/bookings/{booking_id}/{action}", json={}))
    return result


def reminders_of(actor: Actor, booking_id: str) -> list[dict[str, Any]]:
    body = ok(actor.http.get(f"/v1/bookings/{booking_id}/reminders"))
    items: list[dict[str, Any]] = body["items"]
    return items


def all_items(actor: Actor, path: str, **params: str) -> list[dict[str, Any]]:
    """Every item of a paginated list (bounded to 50 pages)."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(50):
        query = {"limit": "200", **params, **({"cursor": cursor} if cursor else {})}
        page = ok(actor.http.get(path, params=query))
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return items
    raise AssertionError(f"{path} has more than 50 pages")


def reminder_notifications(actor: Actor, reminder_id: str) -> list[dict[str, Any]]:
    return [n for n in all_items(actor, "/v1/notifications")
            if n["type"] == "reminder.due" and n["data"]["reminder"]["id"] == reminder_id]


def deliveries(admin: Actor, booking_id: str, template_key: str) -> list[dict[str, Any]]:
    return [d for d in all_items(admin, "/v1/admin/emails", booking_id=booking_id) if d["template_key"] == template_key]


def sent_mails(admin: Actor, booking_id: str, template_key: str, count: int = 1) -> list[dict[str, Any]] | None:
    """The sent deliveries of `template_key` for a booking, once there are at least `count`."""
    sent = [d for d in deliveries(admin, booking_id, template_key) if d["status"] == "sent"]
    return sent if len(sent) >= count else None


def read_mail(path: Path) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
    assert isinstance(message, EmailMessage)
    return message


def mail_parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and html is not None, "an email must be multipart text + HTML"
    return str(text.get_content()), str(html.get_content())


def outbox_mails(outbox: Path, booking_id: str, subject_prefix: str) -> list[EmailMessage]:
    """Every `.eml` in the outbox about `booking_id` whose subject starts with `subject_prefix`."""
    found = []
    for path in sorted(outbox.glob("*.eml")) if outbox.exists() else []:
        message = read_mail(path)
        if str(message["Subject"]).startswith(subject_prefix) and booking_id in mail_parts(message)[0]:
            found.append(message)
    return found


def history_entry(actor: Actor, booking_id: str, action: str) -> dict[str, Any] | None:
    entries = ok(actor.http.get(f"/v1/bookings/{booking_id}/history"))["items"]
    return next((e for e in entries if e["action"] == action), None)


def lateness(due_at: str, moment: datetime | str) -> float:
    moment = parse_time(moment) if isinstance(moment, str) else moment
    return (moment - parse_time(due_at)).total_seconds()


def report(title: str, figures: list[float]) -> str:
    if not figures:
        return f"{title}: none"
    return f"{title}: n={len(figures)} min={min(figures):.3f}s max={max(figures):.3f}s " \
           f"mean={sum(figures) / len(figures):.3f}s"


def all_sent(actor: Actor, booking_id: str, ids: set[str]) -> list[dict[str, Any]] | None:
    rows = [r for r in reminders_of(actor, booking_id) if r["id"] in ids]
    return rows if rows and all(r["status"] == "sent" for r in rows) else None


# --- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Two workers and two schedulers beside one API, on a private Redis (tests 1-3)."""
    base = tmp_path_factory.mktemp("reminders")
    with private_redis(base / "redis") as redis, bookwire_stack(base / "var", redis.url) as running:
        yield running


@pytest.fixture(scope="module")
def people(stack: Stack) -> People:
    return cast_of(stack.server)


# --- 1. firing -----------------------------------------------------------------------------------------


def test_confirmation_schedules_reminders_that_fire_once_on_time(stack: Stack, people: People) -> None:
    customer, owner, admin = people.customer, people.owner, people.admin
    resource = make_resource(owner, name="Quiet room", capacity=1)
    starts_at = seconds_ahead(12)
    with Recorder(stack.base_url, customer) as to_customer, Recorder(stack.base_url, owner) as to_owner, \
            Recorder(stack.base_url, admin) as to_admin, \
            Recorder(stack.base_url, people.other_customer) as to_other:
        booking = book(customer, resource["id"], starts_at)
        assert booking["status"] == "pending"
        assert reminders_of(customer, booking["id"]) == [], "a pending booking has no reminders"
        act(owner, booking["id"], "confirm")

        planned = reminders_of(customer, booking["id"])
        assert reminders_of(owner, booking["id"]) == planned and reminders_of(admin, booking["id"]) == planned
        assert people.other_customer.http.get(f"/v1/bookings/{booking['id']}/reminders").status_code == 404
        for row in planned:
            assert set(row) == REMINDER_FIELDS, row
            assert row["status"] == "scheduled" and row["fired_at"] is None, row
            assert parse_time(row["due_at"]) == starts_at - timedelta(seconds=row["offset_seconds"]), row
        assert sorted((r["recipient_id"], r["recipient_role"], r["offset_seconds"]) for r in planned) == sorted([
            (owner.id, "owner", 6), (owner.id, "owner", 4), (customer.id, "customer", 5)]), \
            f"offsets 6s,4s (owner) and 5s (customer), the past 30s skipped: {planned}"
        recorder_of = {owner.id: to_owner, customer.id: to_customer}
        ids = {r["id"] for r in planned}

        last_due = max(parse_time(r["due_at"]) for r in planned)
        timeout = (last_due - datetime.now(UTC)).total_seconds() + LATENESS_LIMIT + 2
        fired = eventually(lambda: all_sent(customer, booking["id"], ids), timeout, "every reminder sent",
                           stack.explain)
        eventually(lambda: all(recorder_of[r["recipient_id"]].reminders(r["id"]) for r in planned), 3,
                   "a reminder.due event for every reminder", stack.explain)
        time.sleep(QUIET_SECONDS)  # a second worker or scheduler firing it again would show by now

        event_lateness, stored_lateness = [], []
        for row in fired:
            own = recorder_of[row["recipient_id"]]
            events = own.reminders(row["id"])
            assert len(events) == 1, f"reminder {row} fired {len(events)} times on its recipient's stream"
            envelope = events[0].envelope
            assert envelope["channel"] == f"user:{row['recipient_id']}", envelope
            assert envelope["data"]["booking"]["id"] == booking["id"], envelope
            assert envelope["data"]["reminder"]["status"] == "sent", envelope
            for other in (to_owner, to_customer, to_admin, to_other):
                if other is not own:
                    assert not other.reminders(row["id"]), f"{row['id']} reached {other.actor.email}"
            event_lateness.append(lateness(row["due_at"], events[0].at))
            stored_lateness.append(lateness(row["due_at"], row["fired_at"]))
            recipient = owner if row["recipient_id"] == owner.id else customer
            assert len(reminder_notifications(recipient, row["id"])) == 1, f"one in-app notification for {row}"
        print(f"\n[reminders] {report('event arrival - due_at', event_lateness)}; "
              f"{report('fired_at - due_at', stored_lateness)}")
        assert max(event_lateness) <= LATENESS_LIMIT, event_lateness
        assert 0 <= min(stored_lateness) and max(stored_lateness) <= LATENESS_LIMIT, stored_lateness

    # Email: one per reminder, to its recipient, with the booking's details and the app link.
    expected = {"reminder.owner": 2, "reminder.customer": 1}
    for key, count in expected.items():
        eventually(partial(sent_mails, admin, booking["id"], key, count), 10, f"{count} {key} email(s) sent",
                   stack.explain)
    time.sleep(1)
    mails = outbox_mails(stack.outbox, booking["id"], "Reminder")
    by_address = {address: [m for m in mails if str(m["To"]) == address] for address in (owner.email, customer.email)}
    assert len(by_address[owner.email]) == 2 and len(by_address[customer.email]) == 1, \
        {a: len(m) for a, m in by_address.items()}
    assert len(mails) == 3, f"{len(mails)} reminder emails for 3 reminders"
    for key, count in expected.items():
        assert len(deliveries(admin, booking["id"], key)) == count, key
    text, html = mail_parts(by_address[customer.email][0])
    link = f"{APP_URL}/bookings/{booking['id']}"
    assert link in text and link in html, text
    assert "Quiet room" in text and booking["id"] in text


def test_cleanup_and_sweep_are_registered_as_periodic_jobs(stack: Stack) -> None:
    redis = Redis.from_url(stack.redis_url)
    try:
        for job_id in ("bookwire-periodic-sweep", "bookwire-periodic-cleanup"):
            assert redis.zscore(SCHEDULED_JOBS_KEY, job_id) is not None, f"{job_id} is not scheduled"
    finally:
        redis.close()


def test_a_burst_larger_than_one_batch_fires_every_reminder_once_on_time(stack: Stack, people: People) -> None:
    """More reminders due in one second than one job claims (app.bookings.reminders.REMINDER_BATCH): the job
    hands the rest to another run, and still each fires once, within 2 s."""
    customer, owner = people.customer, people.owner
    count = REMINDER_BATCH + 10
    resource = make_resource(owner, name="Hall", capacity=count, requires_confirmation=False)
    starts_at = seconds_ahead(20)
    with Recorder(stack.base_url, customer) as to_customer, Recorder(stack.base_url, owner) as to_owner:
        bookings = [book(customer, resource["id"], starts_at) for _ in range(count)]
        assert datetime.now(UTC) < starts_at - timedelta(seconds=7), "booking took too long to test anything"
        planned = [r for b in bookings for r in reminders_of(customer, b["id"])]
        assert len(planned) == 3 * count, len(planned)  # 6s, 4s to the owner; 5s to the customer
        recorder_of = {owner.id: to_owner, customer.id: to_customer}
        last_due = max(parse_time(r["due_at"]) for r in planned)
        timeout = (last_due - datetime.now(UTC)).total_seconds() + LATENESS_LIMIT + 2
        eventually(lambda: all(recorder_of[r["recipient_id"]].reminders(r["id"]) for r in planned), timeout,
                   "a reminder.due event for every reminder", stack.explain)
        time.sleep(QUIET_SECONDS)
        figures = []
        for row in planned:
            events = recorder_of[row["recipient_id"]].reminders(row["id"])
            assert len(events) == 1, f"reminder {row['id']} fired {len(events)} times"
            figures.append(lateness(row["due_at"], events[0].at))
    print(f"\n[burst of {3 * count}] {report('event arrival - due_at', figures)}")
    assert max(figures) <= LATENESS_LIMIT, sorted(figures)[-5:]
    redis = Redis.from_url(stack.redis_url)
    try:
        shared = list(redis.scan_iter(match="rq:job:bookwire-reminders-more-*", count=1000))
    finally:
        redis.close()
    assert shared, "no job handed part of the burst to another run"


# --- 2. moving and removing ----------------------------------------------------------------------------


def test_reschedule_moves_and_cancel_check_in_complete_remove_reminders(stack: Stack, people: People) -> None:
    customer, owner = people.customer, people.owner
    resource = make_resource(owner, name="Big hall", capacity=10)
    t0 = seconds_ahead(2)
    with Recorder(stack.base_url, customer) as to_customer, Recorder(stack.base_url, owner) as to_owner:
        def confirmed(seconds: int) -> dict[str, Any]:
            booking = book(customer, resource["id"], t0 + timedelta(seconds=seconds))
            return act(owner, booking["id"], "confirm")

        moved, cancelled, checked, late = confirmed(12), confirmed(12), confirmed(12), confirmed(14)
        racing = [confirmed(14) for _ in RACE_STEPS]
        old = {r["id"] for r in reminders_of(customer, moved["id"])}
        new_start = t0 + timedelta(seconds=17)
        patched = ok(customer.http.patch(f"/v1/bookings/{moved['id']}", json={
            "starts_at": new_start.isoformat(), "ends_at": (new_start + timedelta(hours=1)).isoformat()}))
        assert patched["status"] == "confirmed"
        act(customer, cancelled["id"], "cancel")
        act(owner, checked["id"], "check-in")
        act(owner, checked["id"], "complete")
        assert datetime.now(UTC) < t0 + timedelta(seconds=5), "setting up took too long to test anything"

        rows = reminders_of(customer, moved["id"])
        assert {r["id"] for r in rows if r["status"] == "cancelled"} == old and len(old) == 3, rows
        new = [r for r in rows if r["id"] not in old]
        assert sorted(parse_time(r["due_at"]) for r in new) == sorted(
            new_start - timedelta(seconds=s) for s in (6, 5, 4)), f"new due times follow the new start: {new}"
        assert all(r["status"] == "scheduled" for r in new), new
        for booking in (cancelled, checked):
            rows = reminders_of(customer, booking["id"])
            assert len(rows) == 3 and all(r["status"] == "cancelled" for r in rows), rows

        sleep_until(t0 + timedelta(seconds=14 - 6 - 1))  # 1 s before the first reminder of `late`
        act(customer, late["id"], "cancel")
        race_due = t0 + timedelta(seconds=14 - 6)  # the first reminder of every `racing` booking is due then
        for booking, step in zip(racing, RACE_STEPS, strict=True):  # cancelled across the scheduler's poll
            sleep_until(race_due + timedelta(seconds=step))
            act(customer, booking["id"], "cancel")

        new_ids = {r["id"] for r in new}
        timeout = (new_start - timedelta(seconds=4) - datetime.now(UTC)).total_seconds() + LATENESS_LIMIT + 2
        fired = eventually(lambda: all_sent(customer, moved["id"], new_ids), timeout,
                           "the moved reminders sent", stack.explain)
        time.sleep(QUIET_SECONDS)

        def events_of(booking_id: str) -> list[Received]:
            return [r for rec in (to_customer, to_owner) for r in rec.of_type("reminder.due")
                    if r.envelope["data"]["booking"]["id"] == booking_id]

        moved_events = events_of(moved["id"])
        assert sorted(r.envelope["data"]["reminder"]["id"] for r in moved_events) == sorted(new_ids), \
            "the moved booking is reminded once per new reminder, never at the old times"
        moved_lateness = [lateness(r["due_at"], r["fired_at"]) for r in fired]
        print(f"\n[reschedule] {report('moved reminders fired_at - due_at', moved_lateness)}")
        assert max(moved_lateness) <= LATENESS_LIMIT and min(moved_lateness) >= 0, moved_lateness
        for booking in (cancelled, checked, late):
            rows = reminders_of(customer, booking["id"])
            assert all(r["status"] == "cancelled" and r["fired_at"] is None for r in rows), rows
            assert not events_of(booking["id"]), f"booking {booking['status']} was reminded"

        # Cancelled at or just after a due time: a reminder may have fired before the cancel, never after it,
        # and the ones due later never fire.
        fired_first = 0
        for booking in racing:
            cancelled_at = parse_time(eventually(partial(history_entry, customer, booking["id"], "cancel"), 3,
                                                 "cancel in history")["at"])
            rows = reminders_of(customer, booking["id"])
            sent = [r for r in rows if r["status"] == "sent"]
            assert all(parse_time(r["fired_at"]) <= cancelled_at for r in sent), (rows, cancelled_at)
            assert all(r["offset_seconds"] == 6 for r in sent), f"reminders due after the cancel fired: {rows}"
            assert all(r["status"] == "cancelled" for r in rows if r not in sent), rows
            assert len(events_of(booking["id"])) == len(sent), "one event per reminder fired before the cancel"
            fired_first += len(sent)
        print(f"[reschedule] {len(racing)} bookings cancelled {RACE_STEPS} s after a due time: "
              f"{fired_first} reminder(s) fired before their cancel, none after")


# --- 3. response deadlines -----------------------------------------------------------------------------


def test_unanswered_booking_expires_at_its_deadline_and_frees_its_seats(stack: Stack, people: People) -> None:
    customer, owner, admin = people.customer, people.owner, people.admin
    resource = make_resource(owner, name="Studio", capacity=1, response_deadline_seconds=3)
    answered = make_resource(owner, name="Booth", capacity=1, response_deadline_seconds=3)
    slot = seconds_ahead(3600)
    with Recorder(stack.base_url, customer) as to_customer, Recorder(stack.base_url, owner) as to_owner:
        booking = book(customer, resource["id"], slot)
        kept = book(customer, answered["id"], slot)
        act(owner, kept["id"], "confirm")
        assert booking["status"] == "pending"
        deadline = parse_time(booking["created_at"]) + timedelta(seconds=3)
        taken = people.other_customer.http.post("/v1/bookings", json={
            "resource_id": resource["id"], "starts_at": booking["starts_at"], "ends_at": booking["ends_at"]})
        assert taken.status_code == 409, "the pending booking holds the only seat"

        timeout = (deadline - datetime.now(UTC)).total_seconds() + LATENESS_LIMIT + 2
        events = eventually(lambda: to_customer.booking_events("booking.expired", booking["id"]), timeout,
                            "booking.expired on the customer's stream", stack.explain)
        expired = ok(customer.http.get(f"/v1/bookings/{booking['id']}"))
        assert expired["status"] == "expired", expired
        entry = history_entry(customer, booking["id"], "expire")
        assert entry and entry["from_status"] == "pending" and entry["to_status"] == "expired", entry
        event_late = (events[0].at - deadline).total_seconds()
        stored_late = (parse_time(entry["at"]) - deadline).total_seconds()
        print(f"\n[deadline] expired {stored_late:.3f}s after the deadline (history), "
              f"event arrived {event_late:.3f}s after it")
        assert 0 <= stored_late <= LATENESS_LIMIT and event_late <= LATENESS_LIMIT, (stored_late, event_late)
        assert events[0].envelope["data"]["status"] == "expired"
        eventually(lambda: to_owner.booking_events("booking.expired", booking["id"]), 2,
                   "booking.expired on the owner's stream")

        again = people.other_customer.http.post("/v1/bookings", json={
            "resource_id": resource["id"], "starts_at": booking["starts_at"], "ends_at": booking["ends_at"]})
        assert again.status_code == 201, f"the expired booking freed its seat: {again.text}"
        act(people.other_customer, again.json()["id"], "cancel")

        sleep_until(parse_time(kept["created_at"]) + timedelta(seconds=3 + LATENESS_LIMIT + 1))
        assert ok(customer.http.get(f"/v1/bookings/{kept['id']}"))["status"] == "confirmed", \
            "a booking confirmed before its deadline does not expire"
        assert history_entry(customer, kept["id"], "expire") is None
        assert len(to_customer.booking_events("booking.expired", booking["id"])) == 1
        assert not to_customer.booking_events("booking.expired", kept["id"])

    mailed = eventually(partial(sent_mails, admin, booking["id"], "booking.expired.customer"), 10,
                        "the expiry email sent", stack.explain)
    assert len(mailed) == 1 and mailed[0]["to_address"] == customer.email, mailed
    message = read_mail(stack.outbox / f"{mailed[0]['id']}.eml")
    text, _ = mail_parts(message)
    assert str(message["To"]) == customer.email and "expired" in str(message["Subject"])
    assert booking["id"] in text and f"{APP_URL}/bookings/{booking['id']}" in text


# --- 4. restarts ---------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What was scheduled: a confirmed booking's reminders and a pending one's deadline."""

    reminded: dict[str, Any]
    reminders: list[dict[str, Any]]
    pending: dict[str, Any]
    deadline: datetime


def plan_due_soon(customer: Actor, owner: Actor, lead: int) -> Plan:
    """Reminders due `lead` to `lead + 2` s ahead (offsets 6s and 4s owner, 5s customer) and a deadline due `lead`
    s ahead (it was created just before)."""
    room = make_resource(owner, name="Rehearsal room", capacity=1)
    slow = make_resource(owner, name="Slow studio", capacity=1, response_deadline_seconds=lead)
    reminded = book(customer, room["id"], seconds_ahead(lead + 6))
    act(owner, reminded["id"], "confirm")
    pending = book(customer, slow["id"], seconds_ahead(3600))
    reminders = reminders_of(customer, reminded["id"])
    assert sorted(r["offset_seconds"] for r in reminders) == [4, 5, 6], reminders
    return Plan(reminded, reminders, pending, parse_time(pending["created_at"]) + timedelta(seconds=lead))


def check_fired_once_on_time(plan: Plan, customer: Actor, owner: Actor, recorders: dict[str, Recorder],
                        explain: Callable[[], str], label: str) -> None:
    """Every reminder and the deadline fired on time and once (in the restart tests: although every
    process was stopped and started again in between)."""
    first_due = min([parse_time(r["due_at"]) for r in plan.reminders] + [plan.deadline])
    margin = (first_due - datetime.now(UTC)).total_seconds()
    print(f"\n[{label}] ready {margin:.1f}s before the first due time")
    assert margin > 0.5, "setting up (or restarting) took so long that nothing was due after it"
    ids = {r["id"] for r in plan.reminders}
    timeout = (max(parse_time(r["due_at"]) for r in plan.reminders) - datetime.now(UTC)).total_seconds() + 5
    fired = eventually(lambda: all_sent(customer, plan.reminded["id"], ids), timeout,
                       f"reminders sent after the restart ({label})", explain)
    eventually(lambda: all(recorders[r["recipient_id"]].reminders(r["id"]) for r in fired), 3,
               "reminder.due events after the restart", explain)
    expired = eventually(lambda: history_entry(customer, plan.pending["id"], "expire"),
                         max((plan.deadline - datetime.now(UTC)).total_seconds(), 0) + 5,
                         "the deadline after the restart", explain)
    time.sleep(QUIET_SECONDS)
    figures = [lateness(r["due_at"], r["fired_at"]) for r in fired]
    event_figures = []
    for row in fired:
        events = recorders[row["recipient_id"]].reminders(row["id"])
        assert len(events) == 1, f"{row} fired {len(events)} times"
        event_figures.append(lateness(row["due_at"], events[0].at))
        recipient = owner if row["recipient_id"] == owner.id else customer
        assert len(reminder_notifications(recipient, row["id"])) == 1, row
    deadline_late = (parse_time(expired["at"]) - plan.deadline).total_seconds()
    print(f"[{label}] {report('fired_at - due_at', figures)}; {report('event - due_at', event_figures)}; "
          f"deadline expired {deadline_late:.3f}s late")
    assert max(figures + event_figures) <= LATENESS_LIMIT and min(figures) >= 0, (figures, event_figures)
    assert 0 <= deadline_late <= LATENESS_LIMIT, deadline_late
    assert len(recorders[customer.id].booking_events("booking.expired", plan.pending["id"])) == 1


def test_reminders_and_deadlines_survive_a_restart_of_every_process(tmp_path: Path) -> None:
    data_dir, redis_dir, port = tmp_path / "var", tmp_path / "redis", free_port()
    redis = EmbeddedRedis(redis_dir, port=port, persist=True)
    redis.start()
    try:
        started = time.monotonic()
        with bookwire_stack(data_dir, redis.url, generation=1) as first:
            people = cast_of(first.server)
            plan = plan_due_soon(people.customer, people.owner, lead=RESTART_LEAD_SECONDS)
            scheduled = scheduled_job_ids(redis.url)
        redis.stop()
        with httpx.Client() as probe:
            with pytest.raises(httpx.ConnectError):
                probe.get(first.base_url + "/health")
        redis.start()
        kept = scheduled_job_ids(redis.url)
        assert scheduled <= kept, f"Redis lost scheduled jobs over the restart: {scheduled - kept}"
        with bookwire_stack(data_dir, redis.url, migrate=False, generation=2) as second:
            print(f"\n[restart] every process stopped and started again in {time.monotonic() - started:.1f}s "
                  "(including the setup)")
            customer, owner = (Actor(a.id, a.role, a.email, a.token, second.server.client(a.token))
                               for a in (people.customer, people.owner))
            with Recorder(second.base_url, customer) as to_customer, Recorder(second.base_url, owner) as to_owner:
                check_fired_once_on_time(plan, customer, owner, {customer.id: to_customer, owner.id: to_owner},
                                    second.explain, "restart")
    finally:
        redis.stop()


def test_workers_fire_reminders_and_deadlines_on_postgresql(tmp_path: Path) -> None:
    """The same firing path with every process on PostgreSQL (a worker keeps a connection pool)."""
    with fresh_database("postgres", tmp_path) as database_url, private_redis(tmp_path / "redis") as redis, \
            bookwire_stack(tmp_path / "var", redis.url, workers=1, schedulers=1, database_url=database_url) as stack:
        people = cast_of(stack.server)
        plan = plan_due_soon(people.customer, people.owner, lead=FIRING_LEAD_SECONDS)
        customer, owner = people.customer, people.owner
        with Recorder(stack.base_url, customer) as to_customer, Recorder(stack.base_url, owner) as to_owner:
            recorders = {customer.id: to_customer, owner.id: to_owner}
            check_fired_once_on_time(plan, customer, owner, recorders, stack.explain, "postgresql")
        for key, count in {"reminder.owner": 2, "reminder.customer": 1}.items():
            eventually(partial(sent_mails, people.admin, plan.reminded["id"], key, count), 10,
                       f"{count} {key} email(s) sent", stack.explain)


def test_bookwire_up_keeps_reminders_and_deadlines_over_a_restart(tmp_path: Path) -> None:
    data_dir, port = tmp_path / "var", free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = bookwire_env(DATA_DIR=str(data_dir), PORT=str(port), **settings_env())
    log = tmp_path / "up.log"

    def start() -> subprocess.Popen[bytes]:
        process = bookwire("up", env=env, log=log)
        try:
            wait_for_http(f"{base_url}/health", process, timeout=60)
            eventually(lambda: httpx.get(f"{base_url}/ready", timeout=5).status_code == 200, 20,
                       "bookwire up ready", lambda: log_tail(log))
        except BaseException:
            stop_process(process, signal.SIGINT, timeout=30)
            raise
        return process

    process = start()
    try:
        server = Server("sqlite", base_url, "", data_dir)
        customer, owner = register(server, "customer", "Carol Customer"), register(server, "provider", "Paula")
        plan = plan_due_soon(customer, owner, lead=RESTART_LEAD_SECONDS)
    finally:
        stop_process(process, signal.SIGINT, timeout=30)
    assert process.returncode == 0, log_tail(log)
    redis_port = int(re.findall(r"port=(\d+)", (data_dir / "redis" / "redis.log").read_text())[-1])
    with httpx.Client() as probe, pytest.raises(httpx.ConnectError):
        probe.get(f"http://127.0.0.1:{redis_port}")  # the embedded Redis stopped with everything else
    process = start()
    try:
        customer = Actor(customer.id, customer.role, customer.email, customer.token, server.client(customer.token))
        owner = Actor(owner.id, owner.role, owner.email, owner.token, server.client(owner.token))
        with Recorder(base_url, customer) as to_customer, Recorder(base_url, owner) as to_owner:
            check_fired_once_on_time(plan, customer, owner, {customer.id: to_customer, owner.id: to_owner},
                                lambda: log_tail(log, 60), "bookwire up restart")
    finally:
        stop_process(process, signal.SIGINT, timeout=30)
    assert list((data_dir / "redis").glob("appendonly*")), "the embedded Redis keeps an AOF in DATA_DIR"


# --- 5. cleanup ----------------------------------------------------------------------------------------


def run_in_database(database_url: str, work: Callable[[], Any]) -> Any:
    """Run the coroutine made by `work` with Piccolo's tables bound to `database_url` (a fresh engine)."""
    from app.db.engine import bind_engine, engine_from_url

    async def main() -> Any:
        bind_engine(engine_from_url(database_url))
        return await work()

    return asyncio.run(main())


async def first_sse_event(base_url: str, actor: Actor, last_event_id: str) -> dict[str, Any]:
    stream = await open_stream(f"{base_url}/v1/events/stream",
                               {"Authorization": f"Bearer {actor.token}", "Last-Event-ID": last_event_id})
    try:
        assert stream.status == 200, stream.body
        events = await stream.events(1, timeout=5)
        assert events, "the stream sent nothing"
        return events[0].envelope
    finally:
        stream.close()


def test_cleanup_trims_history_and_deletes_old_fired_reminders_and_read_notifications(tmp_path: Path) -> None:
    from app.db.tables import Notification, Reminder
    from app.realtime.bus import GLOBAL_STREAM, channel_stream

    # The API keeps the default 7-day retention, so a stream.reset after cleanup can only come from the
    # history the worker's cleanup trimmed with its STREAM_RETENTION of 2 s.
    with private_redis(tmp_path / "redis") as redis_server, \
            bookwire_stack(tmp_path / "var", redis_server.url, workers=1, schedulers=0,
                           worker_env={"STREAM_RETENTION": "2s"}) as stack:
        people = cast_of(stack.server)
        customer, owner, admin = people.customer, people.owner, people.admin
        resource = make_resource(owner, name="Desk", requires_confirmation=False)
        booking = book(customer, resource["id"], seconds_ahead(3600))
        assert booking["status"] == "confirmed"
        outbox_settled(customer.http)  # the booking's events go out a moment after its answer
        old_events = ok(customer.http.get("/v1/events/poll", params={"cursor": "0-0", "timeout": "0"}))["events"]
        assert old_events, "the booking published events to the customer"
        old_id = next(e["id"] for e in old_events if e["channel"] == f"user:{customer.id}")

        now = datetime.now(UTC)

        def ago(days: float) -> datetime:
            return now - timedelta(days=days)

        rows = {name: uuid.uuid4() for name in ("old_sent", "recent_sent", "old_read", "recent_read", "old_unread")}

        async def insert() -> None:
            for name, due in (("old_sent", ago(40)), ("recent_sent", ago(1))):
                await Reminder.insert(Reminder(
                    id=rows[name], booking_id=uuid.UUID(booking["id"]), recipient_id=uuid.UUID(customer.id),
                    recipient_role="customer", offset_seconds=3600, due_at=due, status="sent", fired_at=due,
                    created_at=due))
            for name, created, read in (("old_read", ago(45), ago(40)), ("recent_read", ago(2), ago(1)),
                                        ("old_unread", ago(45), None)):
                await Notification.insert(Notification(
                    id=rows[name], user_id=uuid.UUID(customer.id), type="test.cleanup", title=name, body=name,
                    data="{}", created_at=created, read_at=read))

        run_in_database(stack.database_url, insert)
        scheduled = {r["id"] for r in reminders_of(customer, booking["id"]) if r["status"] == "scheduled"}
        assert scheduled, "the confirmed booking has scheduled reminders"

        time.sleep(2.5)  # the booking's events are now older than the worker's retention
        recent = [ok(admin.http.post("/v1/admin/announcements",
                                     json={"title": f"Recent {n}", "body": "b", "audience": "all"}), 202)["id"]
                  for n in range(2)]
        before = asyncio.run(first_sse_event(stack.base_url, customer, old_id))
        assert before["type"] != "stream.reset", "before cleanup the old id still replays"

        connection = Redis.from_url(stack.redis_url)
        try:
            job: Job = Queue("default", connection=connection).enqueue("workers.jobs.cleanup")
            eventually(lambda: job.get_status(refresh=True) in ("finished", "failed"), 20, "cleanup ran",
                       stack.explain)
            assert job.get_status() == "finished", f"{job.exc_info}\n{stack.explain()}"
            cutoff_ms = int(time.time() * 1000) - 2000 - 1000  # retention, and the time since the job ran
            history = stream_ids(connection, GLOBAL_STREAM)
            assert old_id not in history and all(int(i.split("-")[0]) >= cutoff_ms for i in history), history
            assert set(recent) <= set(history), "events younger than the retention stay"
            channel_ids = stream_ids(connection, channel_stream(f"user:{customer.id}"))
            assert old_id not in channel_ids, channel_ids
            assert set(recent) <= set(stream_ids(connection, channel_stream("broadcast")))
        finally:
            connection.close()

        reset = asyncio.run(first_sse_event(stack.base_url, customer, old_id))
        assert reset["type"] == "stream.reset" and reset["channel"] is None, reset
        resumed = asyncio.run(first_sse_event(stack.base_url, customer, recent[0]))
        assert resumed["id"] == recent[1] and resumed["type"] == "announcement", resumed

        left = {r["id"] for r in reminders_of(customer, booking["id"])}
        assert str(rows["old_sent"]) not in left, "a reminder fired 40 days ago is deleted"
        assert str(rows["recent_sent"]) in left and scheduled <= left, "recent and scheduled reminders stay"
        inbox = {n["id"] for n in all_items(customer, "/v1/notifications")}
        assert str(rows["old_read"]) not in inbox, "a notification read 40 days ago is deleted"
        assert {str(rows["recent_read"]), str(rows["old_unread"])} <= inbox, "recent or unread notifications stay"
