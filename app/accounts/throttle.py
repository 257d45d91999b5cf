"""Rate limits on the auth endpoints, kept in Redis so that every API process counts together.

- Per e-mail: after `FAILED_SIGN_INS_ALLOWED` failed sign-ins within a minute (counted from the
  first), further attempts for that e-mail get 429 until the minute has passed, right password or not.
- Per client address: at most `AUTH_RATE_LIMIT` requests (default 60 a minute) to `/v1/auth/…`
  in each fixed window: this also throttles registration and stream-token requests.

Both are fixed-window counters whose window starts at their first hit (`SET NX EX` + `INCR` in one
MULTI: atomic, no read-modify-write race between processes). Litestar's own rate-limit middleware
keeps a JSON history per client that it reads, edits and writes back, which lets concurrent
processes undercount, and sends no `Retry-After`.
When Redis is down the limits are not enforced (signing in matters more than counting it).
"""

from __future__ import annotations

import hashlib
import logging
import math

from litestar.types import ASGIApp, Receive, Scope, Send
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.errors import TooManyRequests

log = logging.getLogger(__name__)

KEY_PREFIX = "bookwire:auth:"
AUTH_PATH_PREFIX = "/v1/auth/"
FAILED_SIGN_INS_ALLOWED = 10
FAILED_SIGN_IN_WINDOW_SECONDS = 60
_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


def _failures_key(email: str) -> str:
    return KEY_PREFIX + "failed:" + hashlib.sha256(email.encode()).hexdigest()[:32]


async def check_sign_in_allowed(redis: Redis, email: str) -> None:
    """429 while `email` has used up its failed sign-ins for the current minute."""
    try:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.get(_failures_key(email))
            pipe.pttl(_failures_key(email))
            count, ttl_ms = await pipe.execute()
    except _REDIS_DOWN as exc:
        log.warning("sign-in limit not checked (Redis: %s)", exc)
        return
    if count is not None and int(count) >= FAILED_SIGN_INS_ALLOWED and ttl_ms > 0:
        raise TooManyRequests(
            f"Too many failed sign-ins for this e-mail; try again in {math.ceil(ttl_ms / 1000)} s.",
            math.ceil(ttl_ms / 1000),
        )


async def _count(redis: Redis, key: str, window: int) -> tuple[int, int]:
    """Add one to the counter `key`, whose window starts with its first hit; (count, ms left)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(key, 0, ex=window, nx=True)
        pipe.incr(key)
        pipe.pttl(key)
        _, count, ttl_ms = await pipe.execute()
    return int(count), int(ttl_ms)


async def record_failed_sign_in(redis: Redis, email: str) -> None:
    """Count one failed sign-in for `email` in its current one-minute window."""
    try:
        await _count(redis, _failures_key(email), FAILED_SIGN_IN_WINDOW_SECONDS)
    except _REDIS_DOWN as exc:
        log.warning("failed sign-in not counted (Redis: %s)", exc)


def auth_rate_limit(app: ASGIApp) -> ASGIApp:
    """ASGI middleware: at most AUTH_RATE_LIMIT requests per client address to `/v1/auth/…`.

    The address is the connection's peer as uvicorn reports it (behind a trusted proxy, the
    client it names in `X-Forwarded-For`)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(AUTH_PATH_PREFIX):
            await app(scope, receive, send)
            return
        state = scope["app"].state
        limit, window = state.settings.auth_rate_limit
        client = scope.get("client")
        # The limit is part of the key: a deployment that changes it starts counting afresh.
        key = f"{KEY_PREFIX}addr:{limit}/{window}:{client[0] if client else 'unknown'}"
        try:
            count, ttl_ms = await _count(state.redis, key, window)
        except _REDIS_DOWN as exc:
            log.warning("auth rate limit not checked (Redis: %s)", exc)
            count, ttl_ms = 0, 0
        if count > limit:
            retry_after = math.ceil(ttl_ms / 1000)
            raise TooManyRequests(  # Litestar's exception middleware answers it as a problem document
                f"At most {limit} requests to {AUTH_PATH_PREFIX}… per {window} s from one address; "
                f"try again in {retry_after} s.", retry_after,
            )
        await app(scope, receive, send)

    return middleware
