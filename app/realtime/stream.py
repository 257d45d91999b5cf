"""`GET /v1/events/stream`: Server-Sent Events, written as a bare ASGI handler.

A stream costs one coroutine (the writer) and, under servers other than uvicorn, one small task
waiting for the client to leave; no per-connection Redis subscription, timer or response object.
The writer registers with the hub *before* replaying history, then drops live frames whose id it
already replayed, so the seam between history and live events has neither a gap nor a duplicate.
Once past that seam and parked, the hub may write frames to the socket past it (see hub.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any, cast
from urllib.parse import parse_qsl

from litestar import Litestar
from litestar.types import ASGIApp, Receive, Scope, Send

from app.errors import PROBLEM_MEDIA_TYPE, AppError, outage, problem_response
from app.realtime.access import connection_channels, event_principal, still_active
from app.realtime.bus import EventBus, id_key
from app.realtime.connection import server_cycle, slim
from app.realtime.events import (
    ClosingReason,
    ResetReason,
    StreamClosing,
    StreamReset,
    control_envelope,
    control_frame,
)
from app.realtime.hub import Hub, Subscriber
from app.realtime.presence import Presence
from app.validation import refuse_unknown_query

log = logging.getLogger(__name__)

STREAM_PATH = "/v1/events/stream"
RETRY_MILLISECONDS = 3000
REPLAY_BATCH = 500
REPLAY_LIMIT = 10_000  # a client further behind than this is told to reset and refetch
_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


async def _reset(bus: EventBus, send: Send, reason: ResetReason) -> tuple[int, int]:
    latest = await bus.latest_id()
    envelope = control_envelope("stream.reset", StreamReset(reason, latest), latest)
    await send({"type": "http.response.body", "body": control_frame(envelope), "more_body": True})
    return id_key(latest)


async def replay(bus: EventBus, sub: Subscriber, last_event_id: str, send: Send) -> tuple[int, int]:
    """Send what the client missed after `last_event_id`; the id replay ended at."""
    if not await bus.cursor_is_current(last_event_id):
        return await _reset(bus, send, "unknown_or_expired_id")
    channels = set(sub.channels)
    cursor, sent = last_event_id, 0
    while True:
        events = await bus.read_after(sub.channels, cursor, REPLAY_BATCH)
        if not events:
            return id_key(cursor)
        body = b"".join(e.sse_frame(e.first_channel(channels)) for e in events)
        await send({"type": "http.response.body", "body": body, "more_body": True})
        cursor, sent = events[-1].id, sent + len(events)
        sub.wrote = True
        if sent >= REPLAY_LIMIT:
            return await _reset(bus, send, "too_far_behind")


async def _watch_disconnect(receive: Receive, sub: Subscriber) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    sub.close("")


def _deadline(sub: Subscriber, token_expires_at: float | None, max_age: int) -> None:
    """End the stream at SSE_MAX_AGE ± 10 % (spreads reconnections), or earlier when its token expires."""
    now = time.monotonic()
    sub.deadline, sub.deadline_reason = now + max_age * random.uniform(0.9, 1.1), "max_age"  # noqa: S311
    if token_expires_at is not None and now + token_expires_at - time.time() < sub.deadline:
        sub.deadline, sub.deadline_reason = now + token_expires_at - time.time(), "token_expired"


async def write_stream(sub: Subscriber, send: Send, after: tuple[int, int] | None) -> None:
    """Write frames as they come; end with `stream.closing` when asked to close."""
    boundary = after
    while True:
        await sub.wait(idle=boundary is None)
        if sub.frames:
            frames, sub.frames = sub.frames, []
            if boundary is not None:  # right after a replay: drop what it already sent
                frames = [(i, f) for i, f in frames if i is None or id_key(i) > boundary]
                if any(i is not None for i, _ in frames):
                    boundary = None  # live ids only grow from here on
            if frames:
                body = frames[0][1] if len(frames) == 1 else b"".join(f for _, f in frames)
                await send({"type": "http.response.body", "body": body, "more_body": True})
                if len(frames) > 1 or frames[0][0] is not None:  # a lone heartbeat is not activity
                    sub.wrote = True
        if sub.closing is not None:
            if sub.closing:
                envelope = control_envelope("stream.closing", StreamClosing(cast(ClosingReason, sub.closing)))
                await send({"type": "http.response.body", "body": control_frame(envelope), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return


async def serve_stream(app: Litestar, scope: Scope, receive: Receive, send: Send) -> None:
    """Follow your channels as Server-Sent Events (see the module docstring and the SPEC)."""
    state: Any = app.state
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
    query = dict(pairs)
    principal = await event_principal(state.tokens, headers.get("authorization"), query.get("access_token"))
    refuse_unknown_query(pairs, ("access_token", "last_event_id", "topics"))  # like every route: 422, after 401
    channels = await connection_channels(principal.user, query.get("topics"))
    last_event_id = headers.get("last-event-id") or query.get("last_event_id")
    del headers, query, pairs  # this frame lives as long as the stream: keep only what it needs
    hub: Hub = state.hub
    presence: Presence = state.presence
    cycle = server_cycle(receive)
    if cycle is not None:
        slim(cycle)
    sub = Subscriber(principal.user.id, principal.user.role, channels, "sse", cycle)
    sub.task = asyncio.current_task()
    _deadline(sub, principal.expires_at, state.settings.sse_max_age)
    del principal, channels, cycle  # `sub` holds what the stream needs from them
    hub.add(sub)
    watcher = asyncio.ensure_future(_watch_disconnect(receive, sub)) if sub.cycle is None else None
    started = False
    try:
        try:
            if hub.recently_closed(sub.user_id) and not await still_active(sub.user_id):
                sub.close("deactivated")  # deactivated while this stream was opening (see Hub.recently_closed)
        except Exception as exc:  # the token was just checked; a later deactivation still reaches the hub
            log.warning("could not re-check the account of a new stream: %s", exc)
        with contextlib.suppress(Exception):  # presence is best effort; the stream is what matters
            await presence.opened("sse", sub.user_id, sub.role)
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        started = True
        await send({"type": "http.response.body", "body": b"retry: %d\n\n" % RETRY_MILLISECONDS, "more_body": True})
        after = await replay(state.bus, sub, last_event_id, send) if last_event_id else None
        await write_stream(sub, send, after)
    except Exception as exc:
        if not started:
            raise  # refused before the stream started: `with_event_stream` answers with a problem document
        # Started (e.g. Redis went away during the replay): end it; the client resumes from its last id.
        log.warning("stream of user %s ended by an error: %s", sub.user_id, exc)
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    except asyncio.CancelledError:
        # The hub dropped a subscriber that fell too far behind (and, under uvicorn, already
        # reset its socket), or the server is stopping; the client reconnects with its last id.
        if sub.closing is None:
            raise
    finally:
        if watcher is not None:
            watcher.cancel()
        hub.remove(sub)
        with contextlib.suppress(Exception):
            await presence.closed("sse", sub.user_id, sub.role)


def with_event_stream(app: Litestar) -> ASGIApp:
    """The ASGI app to serve: `GET /v1/events/stream` straight to `serve_stream`, the rest to Litestar.

    A stream lives for minutes and receives every event through `send`; going around Litestar's
    router and middleware (each wraps `send` in another Python call) roughly halves the cost of a
    delivery and the memory a parked stream holds. Its errors are the same problem documents.
    (It is counted and logged by `app/observe.py`, around it, by this route template.)"""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != STREAM_PATH:
            await app(scope, receive, send)
            return
        scope["path_template"] = STREAM_PATH
        method = scope["method"]  # type: ignore[typeddict-item]  # an http scope has one
        if method != "GET":
            await _send_problem(send, 405, "Method not allowed", f"{method} is not allowed on this URL.",
                                "method-not-allowed")
            return
        try:
            await serve_stream(app, scope, receive, send)
        except Exception as exc:  # raised before the stream started (serve_stream ends a started one)
            error = exc if isinstance(exc, AppError) else outage(exc)  # a database outage is a 503
            if error is None:
                raise
            await _send_problem(send, error.status_code, error.title, error.detail, error.slug, error.extra,
                                error.headers)  # refused before the stream started: a problem document
            return

    return asgi


async def _send_problem(send: Send, status: int, title: str, detail: str, slug: str,
                        extra: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
    """Refuse a stream before it starts, with the same problem document the rest of the API sends."""
    response = problem_response(status, title, detail, slug, extra)
    body = response.content if isinstance(response.content, bytes) else b""
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", PROBLEM_MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode()),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})
