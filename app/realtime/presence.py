"""Who is online, across every API process, kept in Redis so that any process can answer.

Each process keeps a hash of its open connections per transport, refreshed with a short TTL (a
crashed process drops out within `TTL_SECONDS`), and refreshes a per-role sorted set of online
user ids scored by when they were last seen (a long-poll client counts while it keeps polling).

Connections opening and closing are written to Redis in batches, at most `FLUSH_SECONDS` late,
in one pipeline: a Redis round trip per connect made a burst of N connects take N Redis
connections at once, and redis-py's pool keeps every connection it ever opened (2,000 streams
opened together left ~2,000 idle Redis connections, and their buffers, in the API process).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from redis.asyncio import Redis

from app.realtime.events import ROLES
from app.realtime.hub import Hub

PREFIX = "bookwire:presence:"
TTL_SECONDS = 30
REFRESH_SECONDS = 10
TRANSPORTS = ("sse", "poll")
FLUSH_SECONDS = 0.05
LAST_SEEN = f"{PREFIX}last_seen"
"""Every user ever seen, scored by when they last were (kept: `last_seen_at` outlives being online)."""

log = logging.getLogger(__name__)


class Presence:
    """This process's share of the presence counts, and the sum over all processes."""

    def __init__(self, redis: Redis, hub: Hub) -> None:
        self.redis = redis
        self.hub = hub
        self.process_key = f"{PREFIX}process:{uuid.uuid4()}"
        self._seen: dict[str, set[str]] = {}  # role -> ids seen since the last write
        self._counts_changed = False
        self._flush: asyncio.Task[None] | None = None

    async def seen(self, user_id: uuid.UUID, role: str) -> None:
        """The user polled: online from now on (written within `FLUSH_SECONDS`)."""
        self._seen.setdefault(role, set()).add(str(user_id))
        self._soon()

    async def opened(self, transport: str, user_id: uuid.UUID, role: str) -> None:
        """A connection opened here (it is already in the hub): counted within `FLUSH_SECONDS`."""
        self._counts_changed = True
        await self.seen(user_id, role)

    async def closed(self, transport: str) -> None:
        """A connection closed here (it has already left the hub)."""
        self._counts_changed = True
        self._soon()

    def _soon(self) -> None:
        if self._flush is None or self._flush.done():
            self._flush = asyncio.get_running_loop().create_task(self._write_changes())

    async def _write_changes(self) -> None:
        await asyncio.sleep(FLUSH_SECONDS)  # gather a burst of connects into one write
        seen, self._seen = self._seen, {}
        counts, self._counts_changed = self._counts_changed, False
        now = time.time()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                if counts:
                    pipe.hset(self.process_key, mapping={t: self.hub.count(t) for t in TRANSPORTS})
                    pipe.expire(self.process_key, TTL_SECONDS)
                for role, users in seen.items():
                    pipe.zadd(f"{PREFIX}online:{role}", dict.fromkeys(users, now))
                    pipe.zadd(LAST_SEEN, dict.fromkeys(users, now))
                await pipe.execute()
        except Exception as exc:  # the periodic refresh writes the counts again
            log.warning("presence update failed: %s", exc)

    async def publish_counts(self) -> None:
        """Write this process's connection counts and refresh its online users."""
        now = time.time()
        online = self.hub.users_online()
        seen, self._seen = self._seen, {}
        for role, users in seen.items():
            online.setdefault(role, set()).update(users)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.process_key, mapping={t: self.hub.count(t) for t in TRANSPORTS})
            pipe.expire(self.process_key, TTL_SECONDS)
            for role, users in online.items():
                pipe.zadd(f"{PREFIX}online:{role}", dict.fromkeys(users, now))
                if users:
                    pipe.zadd(LAST_SEEN, dict.fromkeys(users, now))
            for role in ROLES:
                pipe.zremrangebyscore(f"{PREFIX}online:{role}", 0, now - TTL_SECONDS)
            await pipe.execute()

    async def forget(self) -> None:
        """Remove this process's share (at shutdown)."""
        if self._flush is not None:
            self._flush.cancel()
        await self.redis.delete(self.process_key)

    async def last_seen(self, user_ids: list[str]) -> dict[str, float | None]:
        """When each user was last seen online (Unix seconds), or None; online = within `TTL_SECONDS`."""
        if not user_ids:
            return {}
        scores = await self.redis.zmscore(LAST_SEEN, user_ids)
        return dict(zip(user_ids, scores, strict=True))

    async def snapshot(self) -> dict[str, dict[str, int]]:
        """`{"online": {role: users}, "streams": {transport: open connections}}` over all processes."""
        await self.publish_counts()  # our own share is exact, not up to REFRESH_SECONDS old
        streams = dict.fromkeys(TRANSPORTS, 0)
        async for key in self.redis.scan_iter(match=f"{PREFIX}process:*", count=500):
            counts = await self.redis.hgetall(key)
            for transport in TRANSPORTS:
                streams[transport] += int(counts.get(transport.encode(), 0))
        since = time.time() - TTL_SECONDS
        online = {role: int(await self.redis.zcount(f"{PREFIX}online:{role}", since, "+inf")) for role in ROLES}
        return {"online": online, "streams": streams}
