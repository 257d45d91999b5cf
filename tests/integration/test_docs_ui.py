"""The docs UI at /schema works offline: Chromium with every non-loopback request blocked loads
the page from the app alone and shows the operations."""

from __future__ import annotations

from urllib.parse import urlparse

from browser import CHROMIUM, CHROMIUM_ARGS, require_browser
from conftest import Server

require_browser()

from playwright.sync_api import Route, sync_playwright  # noqa: E402


def test_docs_ui_renders_operations_with_no_network_but_the_app(server: Server) -> None:
    outside: list[str] = []

    def only_loopback(route: Route) -> None:
        if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.route("**/*", only_loopback)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{server.base_url}/schema")
            page.wait_for_selector(".opblock-summary-operation-id, .opblock-summary-path", timeout=20_000)
            paths = page.locator(".opblock-summary-path").all_inner_texts()
        finally:
            browser.close()
    assert any("/v1/bookings" in p for p in paths), paths[:10]
    assert any("/v1/events/stream" in p for p in paths)
    assert not outside, outside
    assert not errors, errors
