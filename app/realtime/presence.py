"""Who is online, across every API process, kept in Redis so that any process can answer.

Each process keeps a hash of its open connections per transport, refreshed with a short TTL (a
crashed process drops out within `TTL_SECONDS`), and refreshes a per-role sorted set of online
user ids scored by when they were last seen (a long-poll client counts while it keeps polling).
"""

from __future__ import annotations

import time
import uuid

from redis.asyncio import Redis

from app.realtime.events import ROLES
from app.realtime.hub import Hub

PREFIX = "bookwire:presence:"
TTL_SECONDS = 30
REFRESH_SECONDS = 10
TRANSPORTS = ("sse", "poll")


class Presence:
    """This process's share of the presence counts, and the sum over all processes."""

    def __init__(self, redis: Redis, hub: Hub) -> None:
        self.redis = redis
        self.hub = hub
        self.process_key = f"{PREFIX}process:{uuid.uuid4()}"

    async def seen(self, user_id: uuid.UUID, role: str) -> None:
        await self.redis.zadd(f"{PREFIX}online:{role}", {str(user_id): time.time()})

    async def opened(self, transport: str, user_id: uuid.UUID, role: str) -> None:
        """A connection opened here: count it at once (the periodic refresh only corrects drift)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(self.process_key, transport, 1)
            pipe.expire(self.process_key, TTL_SECONDS)
            pipe.zadd(f"{PREFIX}online:{role}", {str(user_id): time.time()})
            await pipe.execute()

    async def closed(self, transport: str) -> None:
        await self.redis.hincrby(self.process_key, transport, -1)

    async def publish_counts(self) -> None:
        """Write this process's connection counts and refresh its online users."""
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(self.process_key, mapping={t: self.hub.count(t) for t in TRANSPORTS})
            pipe.expire(self.process_key, TTL_SECONDS)
            for role, users in self.hub.users_online().items():
                pipe.zadd(f"{PREFIX}online:{role}", dict.fromkeys(users, now))
            for role in ROLES:
                pipe.zremrangebyscore(f"{PREFIX}online:{role}", 0, now - TTL_SECONDS)
            await pipe.execute()

    async def forget(self) -> None:
        await self.redis.delete(self.process_key)

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
