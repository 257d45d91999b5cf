"""What the browser tests share: Debian's Chromium and how it is launched, a private Redis per
module (so no other test's broadcasts reach a page), and registering users over HTTP.

A browser test module calls `require_browser()` at import: it skips itself when /usr/bin/chromium
or the playwright package is missing (`tests/run` installs both where it can)."""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from app.embedded_redis import EmbeddedRedis

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required"]


def require_browser() -> None:
    """Skip the calling module when Chromium or playwright is missing."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; tests/run does it as root)",
                    allow_module_level=True)
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("the Python package playwright is missing (pip install -e '.[test]')", allow_module_level=True)


@contextmanager
def private_redis(data_dir: Path) -> Iterator[str]:
    """A Redis of this module alone; its URL."""
    server = EmbeddedRedis(data_dir, persist=False)
    try:
        yield server.start()
    finally:
        server.stop()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def register(http: httpx.Client, role: str, name: str | None = None) -> tuple[str, str]:
    """A new user of `role`; their id and access token. Their email is `<role>-<hex>@example.test`,
    their password `password-123`."""
    body = {"email": f"{role}-{uuid.uuid4().hex[:10]}@example.test", "password": "password-123",
            "name": name or f"Browser {role}", "role": role}
    answer = http.post("/v1/auth/register", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()["user"]["id"], answer.json()["access_token"]
