"""The usual Python way to fan Server-Sent Events out of Redis, as a yardstick for `bench/sse.py`.

    .venv/bin/python bench/sse_baseline.py        # env: PORT (8001), HOST (127.0.0.1), REDIS_URL, JWT_SECRET

FastAPI + sse-starlette + redis.asyncio, one uvicorn worker, started like `bookwire api` (uvloop and
httptools when installed, access log at `info`, `timeout_graceful_shutdown=5`). Nothing here is
Bookwire code. It needs `fastapi` and `sse-starlette`, which are not Bookwire dependencies:
`.venv/bin/pip install fastapi sse-starlette`.

- ONE Redis pub/sub subscription per process (channel `bench:baseline:live`), read by one task that
  decodes each message once (`json.loads`), encodes the client envelope once per channel of the
  event (`json.dumps`, so the comparison is not about a careless per-connection encode), and puts
  it on the `asyncio.Queue(maxsize=1000)` of every connection reading that channel (each connection
  once). A connection whose queue is full is dropped (removed from the registry and ended).
- `GET /v1/events/stream` with `Authorization: Bearer <JWT>`: the token is verified (HS256,
  `JWT_SECRET`, issuer and audience `bookwire`) but, unlike Bookwire, no database row is read and
  nothing is written to Redis; the connection reads `user:<sub>`, `role:<role>` and `broadcast`.
  It answers with sse-starlette's `EventSourceResponse` over an async generator that first yields
  `retry: 3000` and then one event (`id`, `event`, `data`) per queue item; sse-starlette adds a ping
  comment every 15 s, as Bookwire's default heartbeat. No history, replay or dedup.

What a publisher sends (see `bench/sse.py`): `{"id", "type", "channels": [...], "occurred_at",
"data"}` as JSON, PUBLISHed on `bench:baseline:live`. A client receives
`{"id", "type", "channel", "occurred_at", "data"}`, the same envelope as Bookwire's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import jwt
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from redis.asyncio import Redis
from sse_starlette.event import ServerSentEvent
from sse_starlette.sse import EventSourceResponse

LIVE_CHANNEL = "bench:baseline:live"
QUEUE_SIZE = 1000
RETRY_MILLISECONDS = 3000
PING_SECONDS = 15

log = logging.getLogger("sse_baseline")


class Connection:
    __slots__ = ("channels", "queue")

    def __init__(self, channels: list[str]) -> None:
        self.channels = channels
        self.queue: asyncio.Queue[tuple[str, str, str] | None] = asyncio.Queue(QUEUE_SIZE)


class Registry:
    """Open connections by channel."""

    def __init__(self) -> None:
        self.by_channel: dict[str, set[Connection]] = {}
        self.delivered = 0
        self.dropped = 0

    def add(self, conn: Connection) -> None:
        for channel in conn.channels:
            self.by_channel.setdefault(channel, set()).add(conn)

    def remove(self, conn: Connection) -> None:
        for channel in conn.channels:
            subs = self.by_channel.get(channel)
            if subs is not None:
                subs.discard(conn)
                if not subs:
                    del self.by_channel[channel]

    def dispatch(self, raw: bytes) -> None:
        event = json.loads(raw)
        seen: set[Connection] = set()
        for channel in event["channels"]:
            subs = self.by_channel.get(channel)
            if not subs:
                continue
            data = json.dumps({"id": event["id"], "type": event["type"], "channel": channel,
                               "occurred_at": event["occurred_at"], "data": event["data"]}, separators=(",", ":"))
            item = (event["id"], event["type"], data)
            for conn in list(subs):
                if conn in seen:
                    continue
                seen.add(conn)
                try:
                    conn.queue.put_nowait(item)
                    self.delivered += 1
                except asyncio.QueueFull:  # too far behind: drop it rather than buffer without bound
                    self.dropped += 1
                    self.remove(conn)
                    while not conn.queue.empty():
                        conn.queue.get_nowait()
                    conn.queue.put_nowait(None)


async def follow(redis: Redis, registry: Registry, ready: asyncio.Event) -> None:
    """The one pub/sub subscription of this process (no reconnection logic: it is a benchmark)."""
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(LIVE_CHANNEL)
    ready.set()
    try:
        async for message in pubsub.listen():
            try:
                registry.dispatch(message["data"])
            except Exception:
                log.exception("could not dispatch a message")
    finally:
        with contextlib.suppress(Exception):
            await pubsub.aclose()


def create_app(redis_url: str, jwt_secret: str) -> FastAPI:
    registry = Registry()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = Redis.from_url(redis_url)
        ready = asyncio.Event()
        task = asyncio.create_task(follow(redis, registry, ready))
        await asyncio.wait_for(ready.wait(), 10)
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await redis.aclose()

    app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "delivered": registry.delivered, "dropped": registry.dropped}

    @app.get("/v1/events/stream")
    async def stream(request: Request) -> EventSourceResponse:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(401, "Send `Authorization: Bearer <token>`.")
        try:
            claims = jwt.decode(token, jwt_secret, algorithms=["HS256"], audience="bookwire", issuer="bookwire")
        except jwt.InvalidTokenError as exc:
            raise HTTPException(401, f"The token is invalid: {exc}.") from None
        conn = Connection([f"user:{claims['sub']}", f"role:{claims.get('role', 'customer')}", "broadcast"])
        registry.add(conn)

        async def events() -> AsyncIterator[ServerSentEvent | dict[str, Any]]:
            try:
                yield ServerSentEvent(retry=RETRY_MILLISECONDS)
                while True:
                    item = await conn.queue.get()
                    if item is None:
                        return
                    event_id, event_type, data = item
                    yield {"id": event_id, "event": event_type, "data": data}
            finally:
                registry.remove(conn)

        return EventSourceResponse(events(), ping=PING_SECONDS, headers={"Cache-Control": "no-cache"})

    return app


def main() -> None:
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    secret = os.environ.get("JWT_SECRET")
    if not secret:
        raise SystemExit("set JWT_SECRET")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uvicorn.run(create_app(redis_url, secret), host=os.environ.get("HOST", "127.0.0.1"),
                port=int(os.environ.get("PORT", "8001")), log_level="info", server_header=False,
                timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
