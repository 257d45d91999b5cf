"""Configuration parsing fails fast with the variable's name."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import SettingsError, load_settings, parse_duration, parse_durations, parse_rate


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("5h", 18000), ("1h30m", 5400), ("7d", 604800),
                                                ("45", 45)])
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text, "X") == seconds


@pytest.mark.parametrize("text", ["", "5x", "h", "1.5h", "-3s", "5h junk"])
def test_bad_durations_name_the_variable(text: str) -> None:
    with pytest.raises(SettingsError, match="REMINDER_CUSTOMER_OFFSETS"):
        parse_duration(text, "REMINDER_CUSTOMER_OFFSETS")


@pytest.mark.parametrize(("text", "rate"), [("60/1m", (60, 60)), ("5/10s", (5, 10)), ("1000/1h", (1000, 3600))])
def test_rates(text: str, rate: tuple[int, int]) -> None:
    assert parse_rate(text, "AUTH_RATE_LIMIT") == rate


@pytest.mark.parametrize("text", ["60", "0/1m", "60/0s", "x/1m", "60/soon", "/1m"])
def test_bad_rates_name_the_variable(text: str) -> None:
    with pytest.raises(SettingsError, match="AUTH_RATE_LIMIT"):
        parse_rate(text, "AUTH_RATE_LIMIT")


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings({"DATA_DIR": str(tmp_path), "JWT_SECRET": "x" * 32})
    assert settings.reminder_provider_offsets == parse_durations("5h,4h,3h,2h,1h", "X")
    assert settings.reminder_customer_offsets == (10800,)
    assert settings.email_retry_intervals == (10, 30, 60, 300, 900)
    assert (settings.sse_heartbeat_seconds, settings.sse_max_age, settings.sse_queue_size) == (15, 1800, 1000)
    assert settings.stream_retention == 7 * 86400
    assert (settings.presence_offline_after, settings.sweep_interval) == (30, 10)
    assert settings.auth_rate_limit == (60, 60)
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.database_url == f"sqlite:///{tmp_path / 'bookwire.sqlite3'}"
    assert settings.redis_url is None


def test_local_runs_share_a_dev_secret_through_the_data_dir(tmp_path: Path) -> None:
    first = load_settings({"DATA_DIR": str(tmp_path)})
    second = load_settings({"DATA_DIR": str(tmp_path)})
    assert first.jwt_secret == second.jwt_secret and first.jwt_secret and len(first.jwt_secret) >= 32
    assert (tmp_path / "jwt_secret").stat().st_mode & 0o077 == 0


def test_with_an_external_redis_the_secret_must_be_given(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="JWT_SECRET is required"):
        load_settings({"DATA_DIR": str(tmp_path), "REDIS_URL": "redis://127.0.0.1:6379/0"})


def test_bad_public_key_fails_at_start(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_text("-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n")
    with pytest.raises(SettingsError, match="JWT_PUBLIC_KEY"):
        load_settings({"DATA_DIR": str(tmp_path), "JWT_ALGORITHM": "RS256",
                       "JWT_PUBLIC_KEY": str(tmp_path / "key.pem")})
    with pytest.raises(SettingsError, match="JWT_PUBLIC_KEY"):
        load_settings({"DATA_DIR": str(tmp_path), "JWT_ALGORITHM": "RS256", "JWT_PUBLIC_KEY": "/nonexistent.pem"})


@pytest.mark.parametrize(("env", "names"), [
    ({"JWT_ALGORITHM": "none"}, "JWT_ALGORITHM"),
    ({"JWT_SECRET": "short"}, "JWT_SECRET"),
    ({"JWT_ALGORITHM": "RS256"}, "JWT_PUBLIC_KEY"),
    ({"PORT": "eighty"}, "PORT"),
    ({"SMTP_STARTTLS": "maybe"}, "SMTP_STARTTLS"),
    ({"ADMIN_EMAIL": "a@b.c"}, "ADMIN_PASSWORD"),
])
def test_bad_values_fail_fast(tmp_path: Path, env: dict[str, str], names: str) -> None:
    with pytest.raises(SettingsError, match=names):
        load_settings({"DATA_DIR": str(tmp_path), **env})
