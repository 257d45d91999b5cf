"""Configuration, read once from the environment into a frozen struct.

Every variable is documented with its default in `.env.example`. A bad value stops the process at
start with a message naming the variable, instead of failing on the first request.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

import jwt
import msgspec

from app.redis_url import check_redis_url

_DURATION_PART = re.compile(r"(\d+)([dhms])")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


class SettingsError(ValueError):
    """A configuration variable has a value that cannot be used."""


def parse_duration(text: str, name: str) -> int:
    """Seconds in a duration such as `90s`, `1h30m` or `7d`; a bare number is seconds."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    parts = _DURATION_PART.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise SettingsError(f"{name}={text!r}: expected a duration like 90s, 15m, 5h or 7d")
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)


def parse_durations(text: str, name: str) -> tuple[int, ...]:
    """A comma-separated list of durations, e.g. `5h,4h,3h` -> (18000, 14400, 10800)."""
    return tuple(parse_duration(part, name) for part in text.split(",") if part.strip())


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the processes need to know about their environment."""

    database_url: str
    """`sqlite:///path` or `postgresql://user@host/db`."""
    redis_url: str | None
    """None means "start a private Redis" (only `bookwire up` does that)."""
    data_dir: Path
    """SQLite file, the embedded Redis's AOF, the email outbox."""
    jwt_algorithm: str = "HS256"
    jwt_secret: str | None = None
    """Key for HS256. Shared by every process, so it is never a per-process random default."""
    jwt_public_key: str | None = None
    """PEM key that verifies RS256/ES256 tokens (e.g. from an external identity provider)."""
    jwt_private_key: str | None = None
    """PEM key to mint RS256/ES256 tokens; without it Bookwire only verifies tokens."""
    jwt_issuer: str = "bookwire"
    jwt_audience: str = "bookwire"
    access_token_ttl: int = 3600
    stream_token_ttl: int = 60
    cors_origins: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    app_url: str = "http://127.0.0.1:8000"
    admin_email: str | None = None
    admin_password: str | None = None
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = True
    smtp_from: str = "Bookwire <no-reply@bookwire.local>"
    reminder_provider_offsets: tuple[int, ...] = (18000, 14400, 10800, 7200, 3600)
    reminder_customer_offsets: tuple[int, ...] = (10800,)
    email_retry_intervals: tuple[int, ...] = (10, 30, 60, 300, 900)
    email_send_timeout: int = 30
    message_email_delay: int = 600
    webhook_retry_intervals: tuple[int, ...] = (10, 60, 600, 3600, 21600)
    webhook_allow_private: bool = False
    """Webhooks may point at loopback, private and link-local addresses (and use plain http)."""
    """Longest one SMTP conversation may take; a send unfinished after it (worker killed) is retried."""
    sse_heartbeat_seconds: int = 15
    sse_max_age: int = 1800
    sse_queue_size: int = 1000
    max_streams_per_user: int = 20
    """Event connections (streams and held long-polls) one user may have open in one API process."""
    max_request_header_bytes: int = 32768
    """Longest request line plus headers; a longer request head is answered 431 before it is parsed."""
    stream_retention: int = 7 * 86400
    presence_offline_after: int = 30
    """Seconds after a user's last connection closed (or last poll) before they are announced offline."""
    sweep_interval: int = 10
    """How often the workers' sweep looks for lost jobs (overdue emails, reminders, deadlines)."""
    auth_rate_limit: tuple[int, int] = (60, 60)
    """Requests per client address to `/v1/auth/…` and the window in seconds (`AUTH_RATE_LIMIT=60/1m`)."""
    log_level: str = "info"
    """debug, info, warning, error or critical (`LOG_LEVEL`)."""
    log_format: str | None = None
    """`json` or `text` (`LOG_FORMAT`); None: the command's own (json for api, worker and scheduler,
    text for `bookwire up` and the one-off commands)."""

    @property
    def jwt_signing_key(self) -> str | None:
        """The key that signs tokens this service mints, or None when it may only verify."""
        return self.jwt_secret if self.jwt_algorithm.startswith("HS") else self.jwt_private_key

    @property
    def jwt_verifying_key(self) -> str:
        """The key that verifies every incoming token."""
        key = self.jwt_secret if self.jwt_algorithm.startswith("HS") else self.jwt_public_key
        assert key is not None  # guaranteed by load_settings
        return key


_ALGORITHMS = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"}


def _bool(text: str, name: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}={text!r}: expected true or false")


def _int(text: str, name: str, minimum: int = 0) -> int:
    try:
        value = int(text)
    except ValueError:
        raise SettingsError(f"{name}={text!r}: expected a whole number") from None
    if value < minimum:
        raise SettingsError(f"{name}={text!r}: must be at least {minimum}")
    return value


def _positive_duration(text: str, name: str) -> int:
    seconds = parse_duration(text, name)
    if seconds < 1:
        raise SettingsError(f"{name}={text!r}: must be at least 1 s")
    return seconds


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("json", "text")


def _choice(text: str, name: str, choices: tuple[str, ...]) -> str:
    value = text.strip().lower()
    if value not in choices:
        raise SettingsError(f"{name}={text!r}: use one of {', '.join(choices)}")
    return value


def parse_rate(text: str, name: str) -> tuple[int, int]:
    """`60/1m` -> (60, 60): a number of requests per duration."""
    count, slash, window = text.partition("/")
    if not slash:
        raise SettingsError(f"{name}={text!r}: expected requests/duration, e.g. 60/1m")
    limit, seconds = _int(count.strip(), name, 1), parse_duration(window, name)
    if seconds < 1:
        raise SettingsError(f"{name}={text!r}: the window must be at least 1 s")
    return limit, seconds


def _redis_url(text: str | None) -> str | None:
    if text is not None:
        try:
            check_redis_url(text)
        except ValueError as exc:  # the message never repeats the URL: it may hold a password
            raise SettingsError(f"REDIS_URL: {exc}") from None
    return text


def _read_key(value: str, name: str, algorithm: str) -> str:
    """A PEM key given inline (with literal `\\n`s) or as a path to a file, checked against `algorithm`."""
    try:
        key = value.replace("\\n", "\n") if "-----BEGIN" in value else Path(value).read_text()
        jwt.algorithms.get_default_algorithms()[algorithm].prepare_key(key)
    except (OSError, jwt.exceptions.InvalidKeyError, ValueError, TypeError) as exc:
        raise SettingsError(f"{name}: not a usable {algorithm} key ({exc})") from None
    return key


def shared_dev_secret(data_dir: Path) -> str:
    """A secret kept in the data folder, so every local process (and the next start) signs alike."""
    path = data_dir / "jwt_secret"
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)  # never readable by others
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as file:
        file.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from environment variables, failing fast with the variable's name."""
    env = os.environ if env is None else env

    def get(name: str) -> str | None:
        value = env.get(name)
        return value if value not in (None, "") else None

    data_dir = Path(get("DATA_DIR") or "./var").resolve()
    algorithm = (get("JWT_ALGORITHM") or "HS256").upper()
    if algorithm not in _ALGORITHMS:
        raise SettingsError(f"JWT_ALGORITHM={algorithm!r}: use one of {', '.join(sorted(_ALGORITHMS))}")
    secret = get("JWT_SECRET")
    public_key = private_key = None
    if algorithm.startswith("HS"):
        if secret is None and get("REDIS_URL") is None:
            secret = shared_dev_secret(data_dir)  # a local run with embedded services
        if secret is None:
            raise SettingsError("JWT_SECRET is required (at least 32 characters, the same in every process)")
        if len(secret) < 32:
            raise SettingsError("JWT_SECRET must be at least 32 characters")
    else:
        if not get("JWT_PUBLIC_KEY"):
            raise SettingsError(f"JWT_ALGORITHM={algorithm} needs JWT_PUBLIC_KEY (a PEM key or a file path)")
        public_key = _read_key(get("JWT_PUBLIC_KEY") or "", "JWT_PUBLIC_KEY", algorithm)
        private_key = _read_key(private, "JWT_PRIVATE_KEY", algorithm) if (private := get("JWT_PRIVATE_KEY")) else None
    port = _int(get("PORT") or "8000", "PORT", 1)
    host = get("HOST") or "127.0.0.1"
    values: dict[str, object] = {
        "database_url": get("DATABASE_URL") or f"sqlite:///{data_dir / 'bookwire.sqlite3'}",
        "redis_url": _redis_url(get("REDIS_URL")),
        "data_dir": data_dir,
        "jwt_algorithm": algorithm,
        "jwt_secret": secret,
        "jwt_public_key": public_key,
        "jwt_private_key": private_key,
        "jwt_issuer": get("JWT_ISSUER") or "bookwire",
        "jwt_audience": get("JWT_AUDIENCE") or "bookwire",
        "access_token_ttl": parse_duration(get("ACCESS_TOKEN_TTL") or "1h", "ACCESS_TOKEN_TTL"),
        "cors_origins": tuple(o.strip() for o in (get("CORS_ORIGINS") or "").split(",") if o.strip()),
        "host": host,
        "port": port,
        "app_url": (get("APP_URL") or f"http://{host}:{port}").rstrip("/"),
        "admin_email": get("ADMIN_EMAIL"),
        "admin_password": get("ADMIN_PASSWORD"),
        "smtp_host": get("SMTP_HOST"),
        "smtp_port": _int(get("SMTP_PORT") or "587", "SMTP_PORT", 1),
        "smtp_username": get("SMTP_USERNAME"),
        "smtp_password": get("SMTP_PASSWORD"),
        "smtp_starttls": _bool(get("SMTP_STARTTLS") or "true", "SMTP_STARTTLS"),
        "smtp_from": get("SMTP_FROM") or "Bookwire <no-reply@bookwire.local>",
        "reminder_provider_offsets": parse_durations(
            get("REMINDER_PROVIDER_OFFSETS") or "5h,4h,3h,2h,1h", "REMINDER_PROVIDER_OFFSETS"
        ),
        "reminder_customer_offsets": parse_durations(
            get("REMINDER_CUSTOMER_OFFSETS") or "3h", "REMINDER_CUSTOMER_OFFSETS"
        ),
        "webhook_retry_intervals": parse_durations(
            get("WEBHOOK_RETRY_INTERVALS") or "10s,1m,10m,1h,6h", "WEBHOOK_RETRY_INTERVALS"
        ),
        "webhook_allow_private": _bool(get("WEBHOOK_ALLOW_PRIVATE") or "false", "WEBHOOK_ALLOW_PRIVATE"),
        "email_retry_intervals": parse_durations(
            get("EMAIL_RETRY_INTERVALS") or "10s,30s,1m,5m,15m", "EMAIL_RETRY_INTERVALS"
        ),
        "email_send_timeout": parse_duration(get("EMAIL_SEND_TIMEOUT") or "30s", "EMAIL_SEND_TIMEOUT"),
        "message_email_delay": parse_duration(get("MESSAGE_EMAIL_DELAY") or "10m", "MESSAGE_EMAIL_DELAY"),
        "sse_heartbeat_seconds": _int(get("SSE_HEARTBEAT_SECONDS") or "15", "SSE_HEARTBEAT_SECONDS", 1),
        "sse_max_age": parse_duration(get("SSE_MAX_AGE") or "30m", "SSE_MAX_AGE"),
        "sse_queue_size": _int(get("SSE_QUEUE_SIZE") or "1000", "SSE_QUEUE_SIZE", 1),
        "max_streams_per_user": _int(get("MAX_STREAMS_PER_USER") or "20", "MAX_STREAMS_PER_USER", 1),
        "max_request_header_bytes": _int(
            get("MAX_REQUEST_HEADER_BYTES") or "32768", "MAX_REQUEST_HEADER_BYTES", 1024
        ),
        "stream_retention": parse_duration(get("STREAM_RETENTION") or "7d", "STREAM_RETENTION"),
        "presence_offline_after": _positive_duration(
            get("PRESENCE_OFFLINE_AFTER") or "30s", "PRESENCE_OFFLINE_AFTER"
        ),
        "sweep_interval": _positive_duration(get("SWEEP_INTERVAL") or "10s", "SWEEP_INTERVAL"),
        "auth_rate_limit": parse_rate(get("AUTH_RATE_LIMIT") or "60/1m", "AUTH_RATE_LIMIT"),
        "log_level": _choice(get("LOG_LEVEL") or "info", "LOG_LEVEL", LOG_LEVELS),
        "log_format": _choice(log_format, "LOG_FORMAT", LOG_FORMATS) if (log_format := get("LOG_FORMAT")) else None,
    }
    if bool(values["admin_email"]) != bool(values["admin_password"]):
        raise SettingsError("ADMIN_EMAIL and ADMIN_PASSWORD must be set together")
    return Settings(**values)  # type: ignore[arg-type]
