"""The event bus on Redis: Streams for ordered, replayable, deduplicated history; pub/sub for live
fan-out to every API process.

One Lua script publishes an event atomically: it checks the dedup key, appends the event to the
global stream (which assigns the id, so ids give one total order), appends the same entry with the
same id to the stream of each of its channels (for cheap replay per connection), and PUBLISHes it.
Because the script is atomic, pub/sub delivers events in id order. Every key shares the `{ev}` hash
tag, so the script also runs on Redis Cluster.

Ephemeral events (`publish_ephemeral`: typing indicators, presence) go over pub/sub alone: no id,
no stream, no replay — a connection that is not open when one is published never sees it.

Each API process holds exactly one pub/sub subscription (`follow`). If that connection drops —
Redis restarted, or Redis closed a subscriber that fell 32 MB behind (`client-output-buffer-limit
pubsub`) — it reconnects and catches up from the global stream before going live again, so nothing
is lost and nothing is delivered twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from heapq import merge
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.realtime.events import Event, now_rfc3339, parse_event_id

log = logging.getLogger(__name__)

KEY_PREFIX = "bookwire:{ev}:"
GLOBAL_STREAM = KEY_PREFIX + "all"
CHANNEL_STREAM_PATTERN = KEY_PREFIX + "ch:*"
LIVE_CHANNEL = "bookwire:ev:live"
CONTROL_CHANNEL = "bookwire:ev:control"
EPHEMERAL_CHANNEL = "bookwire:ev:ephemeral"
"""Events that only connections open at that moment receive (typing, presence): never stored, no id."""
RESUBSCRIBED = "resubscribed"
"""The control message `follow` makes up when it (re)subscribes: control messages may have been
missed while the subscription was down (they are not kept in a stream)."""
DEDUP_SECONDS = 24 * 3600
CATCH_UP_BATCH = 1000

_PUBLISH_LUA = """
if KEYS[2] ~= '' then
  local existing = redis.call('GET', KEYS[2])
  if existing then return {existing, 1} end
end
local id = redis.call('XADD', KEYS[1], 'MINID', '~', ARGV[1], '*', 'e', ARGV[2])
for i = 3, #KEYS do
  redis.call('XADD', KEYS[i], 'MINID', '~', ARGV[1], id, 'e', ARGV[2])
end
if KEYS[2] ~= '' then
  redis.call('SET', KEYS[2], id, 'EX', ARGV[4])
end
redis.call('PUBLISH', ARGV[3], id .. '\\n' .. ARGV[2])
return {id, 0}
"""

_Body = tuple[str, list[str], str, msgspec.Raw]  # type, channels, occurred_at, data
_body_decoder = msgspec.json.Decoder(_Body)


class Publication(msgspec.Struct, frozen=True):
    """One event to publish with `publish_all` (the outbox relay's batch)."""

    type: str
    channels: list[str]
    data: msgspec.Raw
    occurred_at: str
    dedup_key: str


def channel_stream(channel: str) -> str:
    return KEY_PREFIX + "ch:" + channel


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _event(event_id: bytes | str, body: bytes) -> Event:
    event_type, channels, occurred_at, data = _body_decoder.decode(body)
    return Event(_text(event_id), event_type, channels, occurred_at, data)


def _entries(rows: Iterable[Any]) -> list[Event]:
    return [_event(entry_id, fields[b"e"]) for entry_id, fields in rows]


def id_key(event_id: str) -> tuple[int, int]:
    """Sort key of a stream id (`0-0` for anything unreadable)."""
    return parse_event_id(event_id) or (0, 0)


class EventBus:
    """Publish events and read them back; `follow` feeds live events to this process."""

    def __init__(self, redis: Redis, retention_seconds: int) -> None:
        self.redis = redis
        self.retention_ms = retention_seconds * 1000
        self._publish = redis.register_script(_PUBLISH_LUA)
        self.published = 0

    def _script_call(
        self, event_type: str, channels: list[str], data: Any, dedup_key: str | None, occurred_at: str | None,
    ) -> tuple[list[str], list[Any]]:
        """The keys and arguments of the publish script for one event."""
        channels = list(dict.fromkeys(channels))  # one entry per channel, first mention wins the order
        raw = data if isinstance(data, msgspec.Raw) else msgspec.Raw(msgspec.json.encode(data))
        body = msgspec.json.encode((event_type, channels, occurred_at or now_rfc3339(), raw))
        dedup = KEY_PREFIX + "dedup:" + hashlib.sha256(dedup_key.encode()).hexdigest() if dedup_key else ""
        min_id = max(int(time.time() * 1000) - self.retention_ms, 0)
        keys = [GLOBAL_STREAM, dedup, *(channel_stream(c) for c in channels)]
        return keys, [min_id, body, LIVE_CHANNEL, DEDUP_SECONDS]

    async def publish(
        self, event_type: str, channels: list[str], data: Any, dedup_key: str | None = None,
        occurred_at: str | None = None,
    ) -> tuple[str, bool]:
        """Publish one event to `channels`; `(id, deduplicated)`. A repeated dedup key publishes nothing."""
        keys, args = self._script_call(event_type, channels, data, dedup_key, occurred_at)
        event_id, deduplicated = await self._publish(keys=keys, args=args)
        self.published += not deduplicated
        return _text(event_id), bool(deduplicated)

    async def publish_all(self, items: list[Publication | dict[str, str]]) -> list[str | None]:
        """Publish events (each under its dedup key) and control messages, in this order, in one round
        trip; the id of each event (the first one's, for a dedup key seen before), None for a message."""
        try:
            results = await self._publish_all(items)
        except NoScriptError:
            # Redis restarted and lost the script: load it and publish the batch again (the dedup
            # keys make the events that did go out the first time go out once).
            await self.redis.script_load(_PUBLISH_LUA)
            results = await self._publish_all(items)
        self.published += sum(1 for r in results if isinstance(r, list) and not r[1])
        return [_text(r[0]) if isinstance(item, Publication) else None for item, r in zip(items, results, strict=True)]

    async def _publish_all(self, items: list[Publication | dict[str, str]]) -> list[Any]:
        # EVALSHA directly: redis-py's Script in a pipeline first asks SCRIPT EXISTS, a round trip more.
        async with self.redis.pipeline(transaction=False) as pipe:
            for item in items:
                if isinstance(item, Publication):
                    keys, args = self._script_call(item.type, item.channels, item.data, item.dedup_key,
                                                   item.occurred_at)
                    pipe.evalsha(self._publish.sha, len(keys), *keys, *args)
                else:
                    pipe.publish(CONTROL_CHANNEL, msgspec.json.encode(item))
            results: list[Any] = await pipe.execute()
        return results

    async def publish_ephemeral(self, event_type: str, channels: list[str], data: Any) -> None:
        """Hand an event to the connections open now on any API process: no id, never stored."""
        raw = data if isinstance(data, msgspec.Raw) else msgspec.Raw(msgspec.json.encode(data))
        await self.redis.publish(EPHEMERAL_CHANNEL, msgspec.json.encode(
            ("", event_type, list(dict.fromkeys(channels)), now_rfc3339(), raw)))

    async def latest_id(self) -> str:
        """The id of the newest event, or `0-0` when there is none: a cursor meaning "from now on"."""
        rows: Any = await self.redis.xrevrange(GLOBAL_STREAM, count=1)
        return _text(rows[0][0]) if rows else "0-0"

    async def cursor_is_current(self, cursor: str) -> bool:
        """False when replay from `cursor` is impossible: unreadable, past retention, or never issued."""
        parsed = parse_event_id(cursor)
        if parsed is None:
            return False
        if cursor == "0-0":
            return True
        if parsed[0] < time.time() * 1000 - self.retention_ms:
            return False
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xrange(GLOBAL_STREAM, min="-", max="+", count=1)
            pipe.xrange(GLOBAL_STREAM, min=cursor, max=cursor, count=1)
            oldest, exact = await pipe.execute()
        return bool(exact) and bool(oldest) and id_key(_text(oldest[0][0])) <= parsed

    async def read_after(self, channels: list[str], after: str, limit: int) -> list[Event]:
        """Up to `limit` events of `channels` after `after`, in id order, each once."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for channel in channels:
                pipe.xrange(channel_stream(channel), min=f"({after}", max="+", count=limit)
            results = await pipe.execute()
        streams = [_entries(rows) for rows in results if rows]
        events: list[Event] = []
        last = ""
        for event in merge(*streams, key=lambda e: id_key(e.id)):
            if event.id != last:  # an event on two of the channels appears in both streams
                events.append(event)
                last = event.id
                if len(events) == limit:
                    break
        return events

    async def _catch_up(self, after: str, deliver: Callable[[Event], None]) -> str:
        while True:
            rows: Any = await self.redis.xrange(GLOBAL_STREAM, min=f"({after}", max="+", count=CATCH_UP_BATCH)
            for event in _entries(rows):
                deliver(event)
                after = event.id
            if len(rows) < CATCH_UP_BATCH:
                return after

    async def follow(
        self, deliver: Callable[[Event], None], control: Callable[[dict[str, str]], None],
        ready: asyncio.Event | None = None, ephemeral: Callable[[Event], None] | None = None,
    ) -> None:
        """Feed every event published from now on to `deliver`, in order, forever; survives Redis
        restarts. Ephemeral events (id "") go to `ephemeral` as they come (none are caught up)."""
        last = await self.latest_id()
        delay = 0.1
        while True:
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(LIVE_CHANNEL, CONTROL_CHANNEL, EPHEMERAL_CHANNEL)
                async for message in pubsub.listen():
                    if message["type"] == "subscribe":
                        # Also seen when redis-py silently reconnects and resubscribes after a short
                        # outage: whatever was published meanwhile is only in the stream.
                        if message["channel"] == CONTROL_CHANNEL.encode():
                            control({RESUBSCRIBED: "1"})
                        if message["channel"] == LIVE_CHANNEL.encode():
                            last = await self._catch_up(last, deliver)
                            if ready is not None:
                                ready.set()
                            delay = 0.1
                        continue
                    if message["type"] != "message":
                        continue
                    if message["channel"] == CONTROL_CHANNEL.encode():
                        control(msgspec.json.decode(message["data"], type=dict[str, str]))
                        continue
                    if message["channel"] == EPHEMERAL_CHANNEL.encode():
                        if ephemeral is not None:
                            ephemeral(msgspec.json.decode(message["data"], type=Event))
                        continue
                    event_id, _, body = message["data"].partition(b"\n")
                    if id_key(event_id.decode()) <= id_key(last):
                        continue  # already delivered by the catch-up
                    event = _event(event_id, body)
                    deliver(event)
                    last = event.id
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("event bus lost Redis (%s); reconnecting in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):  # the connection may already be gone
                    await pubsub.aclose()
