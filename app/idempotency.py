"""`Idempotency-Key` for creating POSTs, scoped to the caller and kept 24 h — stored in the database,
in the transaction of what the request created.

So a retry finds exactly what committed: never a second booking because the record was lost while
the change was stored (Redis down, a connection that failed after COMMIT). The record is written
with the change (`remember`, called by the service inside its transaction) and only then, so a
failed request leaves the key free: it created nothing, and running it again is safe.
A retry with the same key and body gets the stored response; another body is 422. The same key
while the first request still runs in this process is 409; in another process the retry waits for
the first one's row lock or its record, and then replays its response (or, if it lost a race for the
last seats, is answered from the record when there is one).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

import msgspec
from litestar.params import Parameter

from app.db.errors import is_unique_violation
from app.db.tables import IdempotencyRecord
from app.errors import Conflict, Unprocessable

S = TypeVar("S", bound=msgspec.Struct)

KEEP = timedelta(hours=24)
MAX_KEY_LENGTH = 255

IdempotencyKey = Annotated[str | None, Parameter(header="Idempotency-Key", required=False)]
"""The optional `Idempotency-Key` header of creating POSTs."""

Remember = Callable[[msgspec.Struct], Awaitable[None]]
"""Store the response of a keyed request; a service calls it inside the transaction that creates."""

_running: set[str] = set()  # keys whose first request is running in this process


async def _stored(scope: str) -> dict[str, Any] | None:
    return await IdempotencyRecord.select(IdempotencyRecord.fingerprint, IdempotencyRecord.response).where(
        IdempotencyRecord.id == scope, IdempotencyRecord.created_at > datetime.now(UTC) - KEEP).first()


def _replay(record: dict[str, Any], fingerprint: str, result_type: type[S]) -> S:
    if record["fingerprint"] != fingerprint:
        raise Unprocessable.field("Idempotency-Key", "was already used with a different request body")
    return msgspec.json.decode(record["response"], type=result_type)


async def run_once(
    caller: uuid.UUID,
    key: str | None,
    operation: str,
    body: msgspec.Struct,
    create: Callable[[Remember | None], Awaitable[S]],
    result_type: type[S],
) -> S:
    """Run `create` once per (caller, key); replay its result for identical retries."""
    if key is None:
        return await create(None)
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise Unprocessable.field("Idempotency-Key", f"must be 1 to {MAX_KEY_LENGTH} printable characters")
    fingerprint = hashlib.sha256(operation.encode() + b"\0" + msgspec.json.encode(body)).hexdigest()
    scope = hashlib.sha256(f"{caller}\0{key}".encode()).hexdigest()
    record = await _stored(scope)
    if record is not None:
        return _replay(record, fingerprint, result_type)
    if scope in _running:
        raise Conflict("A request with this Idempotency-Key is still in progress.")

    async def remember(result: msgspec.Struct) -> None:
        # An expired record of the same key is replaced: the key is free again after 24 h.
        await IdempotencyRecord.delete().where(
            IdempotencyRecord.id == scope, IdempotencyRecord.created_at <= datetime.now(UTC) - KEEP)
        await IdempotencyRecord.insert(IdempotencyRecord(
            id=scope, fingerprint=fingerprint, response=msgspec.json.encode(result).decode(),
            created_at=datetime.now(UTC)))

    _running.add(scope)
    try:
        return await create(remember)
    except Exception as exc:
        # Another process committed the same key first (unique violation), or took the seats this
        # retry would have taken: answer from its record.
        if isinstance(exc, Conflict) or is_unique_violation(exc):
            record = await _stored(scope)
            if record is not None:
                return _replay(record, fingerprint, result_type)
        raise
    finally:
        _running.discard(scope)


async def forget_expired() -> None:
    """Delete records past their 24 h (the periodic cleanup)."""
    await IdempotencyRecord.delete().where(IdempotencyRecord.created_at < datetime.now(UTC) - KEEP)
