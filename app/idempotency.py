"""`Idempotency-Key` for creating POSTs, kept in Redis for 24 h and scoped to the caller.

The first request with a key claims it as "running" (for a short lease, so a crashed request does
not lock the key for a day); when it succeeds the response is stored for 24 h. A retry with the same
key and body gets that response back, another body is 422, a retry while the first still runs is 409.
A failed request releases the key: it created nothing, so running it again is safe.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import msgspec
from litestar.params import Parameter
from redis.asyncio import Redis

from app.errors import Conflict, Unprocessable

S = TypeVar("S", bound=msgspec.Struct)

KEEP_SECONDS = 24 * 3600
RUNNING_LEASE_SECONDS = 60
MAX_KEY_LENGTH = 255

IdempotencyKey = Annotated[str | None, Parameter(header="Idempotency-Key", required=False)]
"""The optional `Idempotency-Key` header of creating POSTs."""


class _Entry(msgspec.Struct):
    fingerprint: str
    response: bytes | None = None


async def run_once(
    redis: Redis,
    caller: uuid.UUID,
    key: str | None,
    operation: str,
    body: msgspec.Struct,
    create: Callable[[], Awaitable[S]],
    result_type: type[S],
) -> S:
    """Run `create` once per (caller, key); replay its result for identical retries."""
    if key is None:
        return await create()
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise Unprocessable.field("Idempotency-Key", f"must be 1 to {MAX_KEY_LENGTH} printable characters")
    fingerprint = hashlib.sha256(operation.encode() + b"\0" + msgspec.json.encode(body)).hexdigest()
    redis_key = f"bookwire:idempotency:{caller}:{hashlib.sha256(key.encode()).hexdigest()}"
    claimed = await redis.set(
        redis_key, msgspec.json.encode(_Entry(fingerprint)), nx=True, ex=RUNNING_LEASE_SECONDS
    )
    if not claimed:
        stored = await redis.get(redis_key)
        if stored is None:  # expired between SET and GET: the earlier attempt's lease ran out
            raise Conflict("A request with this Idempotency-Key just finished; retry.")
        entry = msgspec.json.decode(stored, type=_Entry)
        if entry.fingerprint != fingerprint:
            raise Unprocessable.field("Idempotency-Key", "was already used with a different request body")
        if entry.response is None:
            raise Conflict("A request with this Idempotency-Key is still in progress.")
        return msgspec.json.decode(entry.response, type=result_type)
    try:
        result = await create()
    except BaseException:
        await redis.delete(redis_key)
        raise
    entry = _Entry(fingerprint, msgspec.json.encode(result))
    await redis.set(redis_key, msgspec.json.encode(entry), ex=KEEP_SECONDS)
    return result
