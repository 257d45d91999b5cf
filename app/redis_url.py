"""The one place that turns `REDIS_URL` into Redis clients, for every process (API, worker, scheduler,
webhook dispatcher, RQ).

`redis://`, `rediss://` and `unix://` URLs go to redis-py as they are. A Sentinel-managed primary is

    redis+sentinel://[[username]:password@]host[:port][,host[:port]...]/service_name[/db][?sentinel_password=...]

- the hosts are the sentinels (port 26379 unless given; at least one, list them all);
- `service_name` is the name the sentinels monitor (`sentinel monitor <name> ...`), `db` the
  database number (0 unless given);
- `username`/`password` (percent-encoded) are for the data nodes, primary and replicas;
  `sentinel_password` (and `sentinel_username`) for the sentinels, when they require one.

Such a client asks the sentinels for the primary's address whenever it opens a connection. After a
failover, a connection still open to the demoted primary gets READONLY on its next write, or is
closed by the sentinels; redis-py then raises a ConnectionError, and the retry below opens a new
connection to the promoted primary. Every client here retries connection errors, timeouts and
READONLY (a managed Redis behind one endpoint answers READONLY too, while its DNS moves).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry as SyncRetry

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
_PLAIN_SCHEMES = ("redis", "rediss", "unix")
_SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")

CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 10.0
"""A command that gets no answer in this long fails instead of hanging (a frozen server, a host
gone without a reset). Pub/sub reads and RQ's blocking pops are not bound by it: redis-py and RQ
wait on those as long as they need."""

_RETRY_ON = [RedisConnectionError, RedisTimeoutError, ReadOnlyError]
# 0.1 + 0.2 + 0.4 + 0.8 + 1 + 1 s: long enough for a Sentinel's forced failover to promote a replica,
# short enough that a request during a real outage fails (503) in a few seconds.
_RETRIES = 6
_BACKOFF = {"cap": 1.0, "base": 0.05}


PRIMARY_CHECK_SECONDS = 1.0
"""How often a client asks the sentinels whether the primary moved. The sentinels learn of a
failover at once, but a demoted primary hears of it only at their next INFO round, up to 10 s
later; until then it still takes writes, which the new primary never sees. Asking every second
moves every connection (pub/sub ones included) to the new primary within about a second."""


class _AsyncPrimaryPool(redis.asyncio.sentinel.SentinelConnectionPool):
    _checked_at = 0.0

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if time.monotonic() - self._checked_at >= PRIMARY_CHECK_SECONDS:
            self._checked_at = time.monotonic()
            before = self.master_address
            try:
                moved = await self.get_master_address() != before and before is not None
            except (RedisConnectionError, RedisTimeoutError):
                moved = False  # no sentinel answers: keep using the connections we have
            if moved:  # those in use too: they talk to the old primary
                await self.disconnect(inuse_connections=True)
        return await super().get_connection(*args, **kwargs)


class _PrimaryPool(redis.sentinel.SentinelConnectionPool):
    _checked_at = 0.0

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if time.monotonic() - self._checked_at >= PRIMARY_CHECK_SECONDS:
            self._checked_at = time.monotonic()
            before = self.master_address
            try:
                moved = self.get_master_address() != before and before is not None
            except (RedisConnectionError, RedisTimeoutError):
                moved = False
            if moved:
                self.disconnect(inuse_connections=True)
        return super().get_connection(*args, **kwargs)


@dataclass(frozen=True)
class SentinelURL:
    """A parsed `redis+sentinel://` URL."""

    sentinels: list[tuple[str, int]]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None


def is_sentinel(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME + "://")


def parse_sentinel_url(url: str) -> SentinelURL:
    """The parts of a `redis+sentinel://` URL; ValueError saying what is wrong with a bad one."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise ValueError(f"expected {SENTINEL_SCHEME}://")
    # `netloc` holds the credentials and the comma-separated sentinels (urlsplit cannot parse the list).
    credentials, _, hosts = parts.netloc.rpartition("@")
    sentinels = [_host_port(item) for item in hosts.split(",")] if hosts else []
    if not sentinels:
        raise ValueError("no sentinel host: redis+sentinel://host1:26379,host2:26379/<service_name>")
    path = [segment for segment in parts.path.split("/") if segment]
    if not path or len(path) > 2:
        raise ValueError("the path must be /<service_name> or /<service_name>/<db>")
    if len(path) == 2 and not path[1].isdigit():
        raise ValueError(f"database {path[1]!r} is not a number")
    options = {name: values[-1] for name, values in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = set(options) - set(_SENTINEL_OPTIONS)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(sorted(unknown))}: only {', '.join(_SENTINEL_OPTIONS)}")
    username, _, password = credentials.partition(":")
    return SentinelURL(
        sentinels=sentinels, service_name=unquote(path[0]), db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(username) or None, password=unquote(password) or None,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
    )


def _host_port(item: str) -> tuple[str, int]:
    if item.startswith("["):  # [IPv6]:port
        host, _, rest = item[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = item.partition(":")
    if not host:
        raise ValueError(f"empty sentinel host in {item!r}")
    if port and not port.isdigit():
        raise ValueError(f"sentinel port {port!r} is not a number")
    return host, int(port) if port else SENTINEL_PORT


def check_redis_url(url: str) -> None:
    """ValueError for a URL no client can be made from (a configuration error at start)."""
    if is_sentinel(url):
        parse_sentinel_url(url)
        return
    scheme = urlsplit(url).scheme
    if scheme not in _PLAIN_SCHEMES:
        raise ValueError(f"use {', '.join(s + '://' for s in (*_PLAIN_SCHEMES, SENTINEL_SCHEME))}")
    redis.connection.parse_url(url)  # redis-py's own check of the rest


def _options() -> dict[str, Any]:
    return {"socket_connect_timeout": CONNECT_TIMEOUT, "socket_timeout": COMMAND_TIMEOUT,
            "socket_keepalive": True, "retry_on_error": list(_RETRY_ON)}


def _sentinel_kwargs(parsed: SentinelURL) -> dict[str, Any]:
    # The sentinels get no retries of their own: redis-py asks the next sentinel when one fails.
    return {"socket_connect_timeout": CONNECT_TIMEOUT, "socket_timeout": CONNECT_TIMEOUT,
            "username": parsed.sentinel_username, "password": parsed.sentinel_password}


def redis_client(url: str) -> redis.asyncio.Redis:
    """An asyncio client for the primary at `url`, retrying through a restart or a failover."""
    options = {**_options(), "health_check_interval": 30,
               "retry": Retry(ExponentialBackoff(**_BACKOFF), retries=_RETRIES)}
    if not is_sentinel(url):
        return redis.asyncio.Redis.from_url(url, **options)
    parsed = parse_sentinel_url(url)
    sentinel = redis.asyncio.sentinel.Sentinel(parsed.sentinels, sentinel_kwargs=_sentinel_kwargs(parsed))
    client: redis.asyncio.Redis = sentinel.master_for(
        parsed.service_name, connection_pool_class=_AsyncPrimaryPool, db=parsed.db, username=parsed.username,
        password=parsed.password, **options)
    return client


def sync_redis_client(url: str) -> redis.Redis:
    """A blocking client for the primary at `url` (RQ, rq-scheduler, the job queue), retrying like
    `redis_client`."""
    options = {**_options(), "retry": SyncRetry(ExponentialBackoff(**_BACKOFF), retries=_RETRIES)}
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **options)
    parsed = parse_sentinel_url(url)
    sentinel = redis.sentinel.Sentinel(parsed.sentinels, sentinel_kwargs=_sentinel_kwargs(parsed))
    client: redis.Redis = sentinel.master_for(
        parsed.service_name, connection_pool_class=_PrimaryPool, db=parsed.db, username=parsed.username,
        password=parsed.password, **options)
    return client
