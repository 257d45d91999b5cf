"""`/client/bookwire.js` alone, in Debian's Chromium (SPEC "Browser client and pages"): events by
type, prefix and `*`; the long-poll transport; falling back to long-poll when the stream endpoint
fails and when it holds the connection without a byte (a buffering proxy); resuming after the
browser goes offline and online with no gap or duplicate; a fresh stream token for each connection,
also after the server's `stream.closing`; `request()` errors carrying the problem document.

One API on SQLite and a private Redis for the module, with SSE_HEARTBEAT_SECONDS=1 so that a silent
stream is noticed after 2 s; the page is the API's own origin (`/health`), which imports the module.
Needs /usr/bin/chromium and the playwright package (skipped otherwise, like test_browser_live.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser import CHROMIUM, CHROMIUM_ARGS, auth, private_redis, register, require_browser
from conftest import ADMIN_EMAIL, ADMIN_PASSWORD, running_api

require_browser()

from playwright.sync_api import Browser, Page, Route, sync_playwright  # noqa: E402

WAIT_MS = 15_000
HEARTBEAT_SECONDS = 1
BOOT = """async ({token, transport, topics}) => {
  const { Bookwire } = await import("/client/bookwire.js");
  window.got = { ping: [], prefix: [], all: [], states: [], resets: 0 };
  const bw = new Bookwire({ getAccessToken: async () => token, transport, topics });
  bw.on("test.ping", (e) => got.ping.push(e.id));
  bw.on("test.*", (e) => got.prefix.push(e.id));
  bw.on("*", (e) => got.all.push([e.id, e.type]));
  bw.on("state", (s) => got.states.push(s));
  bw.on("reset", () => { got.resets += 1; });
  bw.start();
  window.bw = bw;
}"""


class Site:
    """The module's API, an admin token for publishing, and a browser."""

    def __init__(self, base_url: str, browser: Browser) -> None:
        self.base_url, self.browser = base_url, browser
        self.http = httpx.Client(base_url=base_url, timeout=30)
        answer = self.http.post("/v1/auth/token", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
        self.admin = answer.json()["access_token"] if answer.status_code == 200 else None

    def publish(self, user_id: str, event_type: str = "test.ping") -> str:
        answer = self.http.post("/v1/events", headers=auth(self.admin_token()), json={
            "type": event_type, "channels": [f"user:{user_id}"], "data": {"n": uuid.uuid4().hex}})
        assert answer.status_code == 202, answer.text
        event_id: str = answer.json()["id"]
        return event_id

    def admin_token(self) -> str:
        assert self.admin, "the admin could not sign in"
        return str(self.admin)

    def cursor(self, token: str) -> str:
        cursor: str = self.http.get("/v1/events/poll", headers=auth(token), params={"timeout": 0}).json()["cursor"]
        return cursor

    def polled_ids(self, token: str, cursor: str) -> list[str]:
        """What the long-poll endpoint holds for the user after `cursor`: the reference list."""
        page = self.http.get("/v1/events/poll", headers=auth(token), params={"cursor": cursor, "timeout": 0}).json()
        return [e["id"] for e in page["events"]]

    def open(self, token: str, transport: str = "auto", topics: list[str] | None = None,
             route: Any = None, stream_urls: list[str] | None = None) -> Page:
        """A new page running the client; `stream_urls` collects the URL of every stream it opens."""
        context = self.browser.new_context()
        page = context.new_page()
        if stream_urls is not None:
            page.on("request", lambda r: stream_urls.append(r.url) if "/v1/events/stream" in r.url else None)
        if route is not None:
            page.route("**/v1/events/stream**", route)
        page.goto(f"{self.base_url}/health")
        page.evaluate(BOOT, {"token": token, "transport": transport, "topics": topics or []})
        return page


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("browser-client")
    with private_redis(base / "redis") as redis_url, \
            running_api(base, redis_url, SSE_HEARTBEAT_SECONDS=str(HEARTBEAT_SECONDS)) as (url, _), \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield Site(url, browser)
        finally:
            browser.close()


def got(page: Page) -> dict[str, Any]:
    value: dict[str, Any] = page.evaluate("() => window.got")
    return value


def wait_state(page: Page, state: str, timeout: int = WAIT_MS) -> None:
    page.wait_for_function("s => window.bw && window.bw.state === s", arg=state, timeout=timeout)


def wait_all(page: Page, count: int) -> list[list[str]]:
    page.wait_for_function("n => window.got.all.length >= n", arg=count, timeout=WAIT_MS)
    all_events: list[list[str]] = got(page)["all"]
    return all_events


def test_events_reach_listeners_by_type_prefix_and_star(site: Site) -> None:
    user_id, token = register(site.http, "customer")
    page = site.open(token, transport="sse")
    wait_state(page, "live")
    ping = site.publish(user_id, "test.ping")
    pong = site.publish(user_id, "test.pong")
    other = site.publish(user_id, "other.thing")
    assert wait_all(page, 3) == [[ping, "test.ping"], [pong, "test.pong"], [other, "other.thing"]]
    seen = got(page)
    assert seen["ping"] == [ping] and seen["prefix"] == [ping, pong], seen
    assert seen["states"][:2] == ["connecting", "live"], seen["states"]
    assert page.evaluate("() => bw.lastEventId") == other
    page.evaluate("() => bw.stop()")
    assert page.evaluate("() => bw.state") == "offline"
    site.publish(user_id)
    page.wait_for_timeout(500)
    assert len(got(page)["all"]) == 3, "a stopped client hands nothing on"
    page.context.close()


def test_the_poll_transport_long_polls(site: Site) -> None:
    user_id, token = register(site.http, "customer")
    streams: list[str] = []
    page = site.open(token, transport="poll", stream_urls=streams)
    wait_state(page, "polling")
    ids = [site.publish(user_id) for _ in range(3)]
    assert [event_id for event_id, _ in wait_all(page, 3)] == ids
    assert streams == []
    page.context.close()


def test_auto_falls_back_to_polling_when_the_stream_cannot_be_opened(site: Site) -> None:
    user_id, token = register(site.http, "customer")
    page = site.open(token, route=lambda route: route.fulfill(status=502, body="bad gateway"))
    wait_state(page, "polling")
    ids = [site.publish(user_id) for _ in range(2)]
    assert [event_id for event_id, _ in wait_all(page, 2)] == ids
    page.context.close()


def test_auto_falls_back_to_polling_when_the_stream_stays_silent(site: Site) -> None:
    """A buffering proxy: the stream request is held and not a byte comes back (not even the
    heartbeat). After twice SSE_HEARTBEAT_SECONDS the client polls, and events flow."""
    user_id, token = register(site.http, "customer")
    held: list[Route] = []
    page = site.open(token, route=lambda route: held.append(route))
    page.wait_for_timeout(HEARTBEAT_SECONDS * 1000)
    assert page.evaluate("() => bw.state") == "connecting" and held, "the stream request is held"
    wait_state(page, "polling", timeout=HEARTBEAT_SECONDS * 2000 + 5000)
    event_id = site.publish(user_id)
    assert [e for e, _ in wait_all(page, 1)] == [event_id]
    page.unroute("**/v1/events/stream**")
    page.context.close()


def test_offline_and_back_resumes_with_no_gap_or_duplicate_and_a_fresh_stream_token(site: Site) -> None:
    user_id, token = register(site.http, "customer")
    start = site.cursor(token)
    stream_urls: list[str] = []
    page = site.open(token, transport="sse", stream_urls=stream_urls)
    wait_state(page, "live")
    before = [site.publish(user_id) for _ in range(3)]
    wait_all(page, 3)
    page.context.set_offline(True)
    wait_state(page, "offline")
    during = [site.publish(user_id) for _ in range(5)]  # published while the browser is offline
    page.wait_for_timeout(300)
    assert len(got(page)["all"]) == 3
    page.context.set_offline(False)
    wait_state(page, "live")
    after = [site.publish(user_id) for _ in range(2)]
    received = [event_id for event_id, _ in wait_all(page, 10)]
    page.wait_for_timeout(500)  # a duplicate would show by now
    received = [event_id for event_id, _ in got(page)["all"]]
    assert received == before + during + after == site.polled_ids(token, start), received
    tokens = [httpx.URL(url).params["access_token"] for url in stream_urls]
    assert len(tokens) >= 2 and len(set(tokens)) == len(tokens), "one stream token per connection"
    assert "last_event_id=" in stream_urls[-1] and before[-1] in httpx.URL(stream_urls[-1]).params["last_event_id"]
    page.context.close()


def test_request_throws_an_error_carrying_the_problem_document(site: Site) -> None:
    _, token = register(site.http, "customer")
    page = site.open(token, transport="poll")
    result = page.evaluate("""async () => {
      const outcomes = [];
      for (const [method, path, body] of [["POST", "/v1/bookings", {}], ["GET", "/v1/bookings/" + crypto.randomUUID()],
                                          ["GET", "/v1/me"]]) {
        try { outcomes.push(["ok", await bw.request(method, path, body)]); }
        catch (e) { outcomes.push([e.name, e.status, e.problem, e.message, e instanceof Error]); }
      }
      return outcomes;
    }""")
    invalid, missing, me = result
    assert invalid[:2] == ["BookwireError", 422] and invalid[2]["status"] == 422 and invalid[4] is True, invalid
    assert any(error["field"] for error in invalid[2]["errors"]), invalid
    assert missing[:2] == ["BookwireError", 404] and missing[3] == missing[2]["detail"], missing
    assert me[0] == "ok" and me[1]["role"] == "customer", me
    page.context.close()


def test_stream_closing_reconnects_at_once_with_a_new_token_and_misses_nothing(site: Site, tmp_path: Path) -> None:
    """SSE_MAX_AGE=2s (an API of its own): the server ends each stream with `stream.closing` after
    about 2 s; the client reconnects at once (a fresh stream token, `last_event_id`) while events
    keep coming, and never falls back to polling."""
    with private_redis(tmp_path / "redis") as redis_url, \
            running_api(tmp_path, redis_url, SSE_MAX_AGE="2s") as (url, _):
        short = Site(url, site.browser)
        user_id, token = register(short.http, "customer")
        start = short.cursor(token)
        stream_urls: list[str] = []
        page = short.open(token, transport="auto", stream_urls=stream_urls)
        wait_state(page, "live")
        published = []
        for _ in range(12):  # over about 6 s: two or more stream lifetimes
            published.append(short.publish(user_id))
            page.wait_for_timeout(500)
        received = [event_id for event_id, _ in wait_all(page, len(published))]
        assert received == published == short.polled_ids(token, start)
        assert len(stream_urls) >= 3, stream_urls
        tokens = [httpx.URL(u).params["access_token"] for u in stream_urls]
        assert len(set(tokens)) == len(tokens)
        assert "polling" not in got(page)["states"], got(page)["states"]
        page.context.close()
