"""The `/live` page (the browser client's demo) in a real browser (headless Chromium): live events,
and resuming after the server dies.

Two API processes share one SQLite database and one private Redis, like two instances behind a load
balancer. The browser follows a customer's events through instance A; the test kills A outright
(SIGKILL: no `stream.closing`, the socket just goes away), publishes events through instance B while
the browser is cut off, and starts A again on the same port. The client must reconnect by itself,
with a fresh stream token and `?last_event_id=`, and the page must show every missed event exactly
once and in order: the same list, id for id, that the long-poll endpoint returns for the customer.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
from browser import CHROMIUM, CHROMIUM_ARGS, auth, private_redis, register, require_browser
from conftest import ADMIN_EMAIL, ADMIN_PASSWORD, at, bookwire, bookwire_env, running_api, wait_for_http
from events import outbox_settled

from app.embedded_redis import free_port

require_browser()

from playwright.sync_api import Error as PlaywrightError  # noqa: E402
from playwright.sync_api import Page, Response, expect, sync_playwright  # noqa: E402
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError  # noqa: E402

WAIT_MS = 15_000  # the longest the test waits for the page to show something
STREAM_PATH = "/v1/events/stream"


class ApiOnPort:
    """`bookwire api` on a fixed port, so it can be killed and started again at the same address."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.url = f"http://127.0.0.1:{env['PORT']}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = bookwire("api", env=self.env, log=self.log)
        wait_for_http(f"{self.url}/health", self.process)

    def kill(self) -> None:
        """Die at once, as in a crash: open streams end without `stream.closing`."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def shown(page: Page) -> list[tuple[str, str]]:
    """The (id, type) of every event the page lists, top to bottom."""
    items: list[list[str]] = page.eval_on_selector_all(
        "#events li[data-id]", "items => items.map(li => [li.dataset.id, li.dataset.type])")
    return [(event_id, event_type) for event_id, event_type in items]


def wait_until_shown(page: Page, count: int) -> list[tuple[str, str]]:
    """Wait (bounded) until the page lists at least `count` events; then all of them, however many came."""
    try:
        page.wait_for_function("n => document.querySelectorAll('#events li[data-id]').length >= n", arg=count,
                               timeout=WAIT_MS)
    except PlaywrightTimeoutError:
        pass  # the caller's comparison says what is missing
    return shown(page)


def announce(http: httpx.Client, admin_token: str, title: str) -> str:
    answer = http.post("/v1/admin/announcements", headers=auth(admin_token), json={"title": title, "body": "-"})
    assert answer.status_code == 202, answer.text
    event_id: str = answer.json()["id"]
    return event_id


def test_live_page_shows_events_and_resumes_after_the_server_dies(tmp_path: Path) -> None:
    data_a, data_b = tmp_path / "a", tmp_path / "b"
    data_a.mkdir()
    data_b.mkdir()
    with private_redis(tmp_path / "redis") as redis_url:
        env = bookwire_env(DATABASE_URL=f"sqlite:///{data_a / 'bookwire.sqlite3'}", REDIS_URL=redis_url,
                           DATA_DIR=str(data_a), PORT=str(free_port()))
        log = data_a / "api.log"  # both lives of instance A
        assert bookwire("migrate", env=env, log=log).wait(timeout=120) == 0, log.read_text()
        api_a = ApiOnPort(env, log)
        try:
            api_a.start()
            with running_api(data_b, redis_url, env["DATABASE_URL"], migrate=False) as (url_b, _):
                _scenario(api_a, url_b, tmp_path)
        finally:
            api_a.stop()


def _scenario(api_a: ApiOnPort, url_b: str, tmp_path: Path) -> None:
    with httpx.Client(base_url=url_b, timeout=30) as via_b:
        _, customer = register(via_b, "customer")
        _, owner = register(via_b, "provider")
        answer = via_b.post("/v1/auth/token", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
        assert answer.status_code == 200, answer.text
        admin = answer.json()["access_token"]
        answer = via_b.post("/v1/resources", headers=auth(owner), json={"name": "Browser room", "kind": "room"})
        assert answer.status_code == 201, answer.text
        resource_id = answer.json()["id"]
        outbox_settled(via_b)  # resource.created goes out a moment after the answer: before the page's start
        answer = via_b.get("/v1/events/poll", headers=auth(customer))
        assert answer.status_code == 200, answer.text
        start_cursor = answer.json()["cursor"]

        def expected() -> list[tuple[str, str]]:
            """What the API says the customer has received since the page opened, in order."""
            polled = via_b.get("/v1/events/poll", headers=auth(customer), params={"cursor": start_cursor, "timeout": 0})
            assert polled.status_code == 200, polled.text
            return [(e["id"], e["type"]) for e in polled.json()["events"]]

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            page: Page | None = None
            try:
                page = browser.new_page()
                console: list[str] = []
                page.on("console", lambda message: console.append(message.text))
                streams: list[Response] = []  # every stream the page opened, in order
                page.on("response", lambda r: streams.append(r) if STREAM_PATH in r.url else None)
                token_requests: list[str] = []
                page.on("request", lambda r: token_requests.append(r.url) if "/stream-token" in r.url else None)

                page.goto(f"{api_a.url}/live#token={customer}&transport=sse")
                expect(page.locator("#state")).to_have_text("live", timeout=WAIT_MS)

                # A live event: the customer books over HTTP, the page shows booking.created for it.
                answer = httpx.post(f"{api_a.url}/v1/bookings", headers=auth(customer), timeout=30,
                                    json={"resource_id": resource_id, "starts_at": at(24), "ends_at": at(25)})
                assert answer.status_code == 201, answer.text
                booking_id = answer.json()["id"]
                outbox_settled(via_b)  # its events go out a moment after the answer
                before = expected()
                assert [t for _, t in before] == ["booking.created"], before
                page_events = wait_until_shown(page, len(before))
                assert page_events == before, (page_events, before, console)
                created = page.locator("#events li[data-type='booking.created']")
                expect(created).to_contain_text(booking_id)

                # The connection drops: instance A dies. The browser notices and retries on its own.
                api_a.kill()
                expect(page.locator("#state")).to_have_text("connecting", timeout=WAIT_MS)
                answer = via_b.post(f"/v1/bookings/{booking_id}/confirm", headers=auth(owner))
                assert answer.status_code == 200, answer.text
                outbox_settled(via_b)  # the confirmation's events first, then the announcements
                missed = [announce(via_b, admin, "While you were away 1"),
                          announce(via_b, admin, "While you were away 2")]
                api_a.start()  # same port, same database and Redis

                # Back: everything missed, once, in order; then a live event to prove the seam is clean.
                expect(page.locator("#state")).to_have_text("live", timeout=WAIT_MS)
                sentinel = announce(via_b, admin, "After the reconnect")
                everything = expected()
                assert everything[-1] == (sentinel, "announcement"), everything
                assert [t for _, t in everything] == [
                    "booking.created", "booking.confirmed", "notification.created",
                    "announcement", "announcement", "announcement"], everything
                assert [i for i, t in everything if t == "announcement"] == [*missed, sentinel], everything
                page_events = wait_until_shown(page, len(everything))
                assert page_events == everything, (page_events, everything, console)
                assert len({i for i, _ in page_events}) == len(page_events), page_events
                confirmed = page.locator("#events li[data-type='booking.confirmed']")
                expect(confirmed).to_contain_text(booking_id)

                # The client's reconnect: a fresh stream token, and the last event the page had.
                opened = [r for r in streams if r.status == 200]
                assert len(opened) == 2, [(r.url, r.status) for r in streams]
                first, again = (parse_qs(urlparse(r.url).query) for r in opened)
                assert "last_event_id" not in first, first
                assert again["last_event_id"] == [before[-1][0]], again
                assert first["access_token"] != again["access_token"]
                assert len(token_requests) >= 2, token_requests
            finally:
                if page is not None:
                    with contextlib.suppress(PlaywrightError):  # a failed screenshot must not hide the real failure
                        page.screenshot(path=str(tmp_path / "live.png"), full_page=True)
                browser.close()
