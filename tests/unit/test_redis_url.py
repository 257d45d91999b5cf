"""`REDIS_URL` grammar (app/redis_url.py): what a sentinel URL means, and bad ones stop the start."""

from __future__ import annotations

import pytest

from app.redis_url import SentinelURL, parse_sentinel_url
from app.settings import SettingsError, load_settings

SECRET = {"JWT_SECRET": "x" * 32}


def test_a_sentinel_url_names_the_sentinels_the_service_the_db_and_the_passwords() -> None:
    url = "redis+sentinel://:p%40ss@s1,s2:26380,[::1]:26381/mymaster/2?sentinel_password=sp"
    assert parse_sentinel_url(url) == SentinelURL(
        sentinels=[("s1", 26379), ("s2", 26380), ("::1", 26381)], service_name="mymaster", db=2,
        password="p@ss", sentinel_password="sp")
    assert parse_sentinel_url("redis+sentinel://h/svc") == SentinelURL([("h", 26379)], "svc")


@pytest.mark.parametrize("url", [
    "redis+sentinel://h:26379", "redis+sentinel:///svc", "redis+sentinel://h:x/svc", "redis+sentinel://h/svc/one",
    "redis+sentinel://h/svc?timeout=1", "redis+sentinel://h,,k/svc", "http://h:6379", "redis+cluster://h/svc",
])
def test_a_bad_redis_url_is_a_configuration_error_without_the_url_in_the_message(url: str) -> None:
    with pytest.raises(SettingsError, match="REDIS_URL") as raised:
        load_settings({**SECRET, "REDIS_URL": url.replace("//", "//:secret@", 1)})
    assert "secret" not in str(raised.value)


def test_plain_urls_are_accepted() -> None:
    for url in ("redis://h:6379/0", "rediss://:pw@h:6380/1", "unix:///tmp/redis.sock"):
        assert load_settings({**SECRET, "REDIS_URL": url}).redis_url == url
