"""The portal test modules' shared part: one stack (`bookwire api`, an RQ worker and an rq-scheduler
on SQLite and a private Redis) per module, a Chromium, and people who sign in through the portal's
own form, each in a browser context of their own (two people side by side, as two browsers)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from browser import CHROMIUM, CHROMIUM_ARGS, auth, private_redis, register
from conftest import ADMIN_EMAIL, ADMIN_PASSWORD, at
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright
from test_reminders import bookwire_stack

WAIT_MS = 10_000
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}

# Counts the portal's audio calls (the new-request chime starts one oscillator), so a test can tell
# that the sound played without listening to speakers.
COUNT_CHIMES = """
window.__chimes = 0;
const start = OscillatorNode.prototype.start;
OscillatorNode.prototype.start = function (...args) { window.__chimes += 1; return start.apply(this, args); };
"""


@dataclass
class Person:
    id: str
    email: str
    password: str
    http: httpx.Client


@dataclass
class Portal:
    base_url: str
    browser: Browser
    admin: Person
    pages: list[Page] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def person(self, role: str, name: str) -> Person:
        http = httpx.Client(base_url=self.base_url, timeout=30)
        user_id, token = register(http, role, name)
        http.headers.update(auth(token))
        email = http.get("/v1/me").json()["email"]
        return Person(user_id, email, "password-123", http)

    def open(self, who: Person, path: str = "/app", viewport: dict[str, int] | None = None) -> Page:
        """A new browser context at `path`, signed in through the form; waits until it is Live."""
        page = self.visit(path, viewport)
        sign_in(page, who)
        expect(page.locator("#connection")).to_have_text("Live", timeout=WAIT_MS)
        return page

    def visit(self, path: str, viewport: dict[str, int] | None = None) -> Page:
        """A new browser context at `path`, not signed in. Console errors and uncaught exceptions
        (a CSP violation is one) are collected for `assert_no_errors`."""
        context = self.browser.new_context(viewport=viewport or DESKTOP)  # type: ignore[arg-type]
        context.add_init_script(COUNT_CHIMES)
        page = context.new_page()

        def on_console(message: ConsoleMessage) -> None:
            if message.type == "error":
                self.errors.append(f"{page.url}: {message.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda error: self.errors.append(f"{page.url}: {error}"))
        page.goto(self.base_url + path)
        self.pages.append(page)
        return page

    def close_pages(self) -> None:
        for page in self.pages:
            page.context.close()
        self.pages.clear()

    def assert_no_errors(self) -> None:
        errors, self.errors[:] = list(self.errors), []
        assert not errors, errors


def sign_in(page: Page, who: Person) -> None:
    page.fill("#sign-in input[name=email]", who.email)
    page.fill("#sign-in input[name=password]", who.password)
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#nav a").first).to_be_visible(timeout=WAIT_MS)


def chimes(page: Page) -> int:
    count: int = page.evaluate("() => window.__chimes")
    return count


def ok(answer: httpx.Response, status: int = 200) -> Any:
    assert answer.status_code == status, answer.text
    return answer.json()


def book(customer: Person, resource_id: str | None = None, pool_id: str | None = None, hours: float = 24) -> Any:
    target = {"resource_id": resource_id} if resource_id else {"pool_id": pool_id}
    body = {**target, "starts_at": at(hours), "ends_at": at(hours + 1)}
    return ok(customer.http.post("/v1/bookings", json=body), 201)


@contextmanager
def portal_stack(base: Path) -> Iterator[Portal]:
    """The module's stack and browser; pages are closed after each test by the caller."""
    with private_redis(base / "redis") as redis_url, \
            bookwire_stack(base / "var", redis_url, workers=1, schedulers=1) as stack, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        http = httpx.Client(base_url=stack.base_url, timeout=30)
        token = ok(http.post("/v1/auth/token", json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))["access_token"]
        http.headers.update(auth(token))
        try:
            admin = Person(http.get("/v1/me").json()["id"], ADMIN_EMAIL, ADMIN_PASSWORD, http)
            yield Portal(stack.base_url, browser, admin)
        finally:
            browser.close()
