"""Every main view of the portal, for each role, at a phone's and a desktop's width: it renders with
content (no error card), fits the width (nothing wider than the screen, so a phone never scrolls
sideways), labels every form control, and logs no error (a Content-Security-Policy violation is
one). A screenshot of each is written to $BOOKWIRE_SCREENSHOTS (default: the test's temporary
folder) for a person to look at."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import require_browser

require_browser()

from playwright.sync_api import Page, expect  # noqa: E402
from portal import DESKTOP, PHONE, WAIT_MS, Portal, book, ok, portal_stack  # noqa: E402

VIEWS = {
    "customer": ["/app/book", "/app/bookings", "/app/inbox", "BOOKING"],
    "provider": ["/app/requests", "/app/resources", "/app/bookings", "BOOKING"],
    "admin": ["/app/dashboard", "/app/bookings", "/app/users", "/app/pools", "/app/announcements"],
}
UNLABELLED = """() => [...document.querySelectorAll('main input, main select, main textarea')]
  .filter(el => !el.closest('label') && !el.getAttribute('aria-label')).map(el => el.outerHTML)"""


@pytest.fixture(scope="module")
def portal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Portal]:
    with portal_stack(tmp_path_factory.mktemp("portal-views")) as site:
        yield site


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = Path(os.environ.get("BOOKWIRE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def check(page: Page, shots: Path, name: str) -> None:
    expect(page.locator("main h1")).to_be_visible(timeout=WAIT_MS)
    assert not page.locator("main .error:has-text('Something went wrong')").count()
    page.wait_for_timeout(300)  # seats and counts that load after the heading
    width = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert width <= 0, f"{name} is {width}px wider than the screen"
    assert page.evaluate(UNLABELLED) == [], name
    page.screenshot(path=shots / f"{name}.png", full_page=True)


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_every_main_view_fits_labels_its_controls_and_logs_no_error(
        portal: Portal, shots: Path, viewport: dict[str, int]) -> None:
    size = "phone" if viewport == PHONE else "desktop"
    provider = portal.person("provider", "Morgan Meadows")
    customer = portal.person("customer", "Alex Rivera")
    room = ok(provider.http.post("/v1/resources", json={
        "name": "Reading room with a rather long name", "capacity": 6, "price_cents": 1250, "currency": "EUR",
        "description": "Quiet, bright, with a whiteboard.", "response_deadline_seconds": 1800}), 201)
    ok(portal.admin.http.post("/v1/pools", json={"name": f"City therapists {size}", "description": "Any"}), 201)
    booking = book(customer, str(room["id"]))
    book(customer, str(room["id"]), hours=48)
    ok(customer.http.post(f"/v1/bookings/{booking['id']}/messages", json={"body": "Is there a projector?"}), 201)
    ok(provider.http.post(f"/v1/bookings/{booking['id']}/messages", json={"body": "Yes, and an HDMI cable."}), 201)

    sign_in_page = portal.visit("/app", viewport)
    check(sign_in_page, shots, f"sign-in-{size}")
    for role, who in (("customer", customer), ("provider", provider), ("admin", portal.admin)):
        page = portal.open(who, "/app", viewport)
        for path in VIEWS[role]:
            target = f"/bookings/{booking['id']}" if path == "BOOKING" else path
            page.goto(portal.base_url + target)
            expect(page.locator("#connection")).to_have_text("Live", timeout=WAIT_MS)
            check(page, shots, f"{role}-{target.strip('/').replace('/', '-')}-{size}"
                  .replace(booking["id"], "booking"))
    portal.close_pages()
    portal.assert_no_errors()
