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
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from app.db.tables import Booking
from app.realtime.bus import EventBus
from app.realtime.events import ROLES, PresenceChanged, user_channel
from app.realtime.hub import Hub

PREFIX = "bookwire:presence:"
TTL_SECONDS = 30
"""The default of PRESENCE_OFFLINE_AFTER (SPEC: offline 30 s after the last connection)."""
REFRESH_SECONDS = 10
EXPIRE_SECONDS = 2  # how often the users gone offline are looked for
TRANSPORTS = ("sse", "poll")
FLUSH_SECONDS = 0.05
ANNOUNCE_BATCH = 200
"""Users whose bookings one query reads when many come online at once (bound: SQLite's 999 variables)."""
LAST_SEEN = f"{PREFIX}last_seen"
"""Every user ever seen, scored by when they last were (kept: `last_seen_at` outlives being online)."""
ONLINE = f"{PREFIX}online"
"""The users online now (seen within `TTL_SECONDS`), scored by when they were last seen. Joining it
and leaving it are the transitions `presence.changed` announces, each decided atomically in Redis,
so one process announces each, and a reconnect within `TTL_SECONDS` announces nothing."""
ACTIVE_STATUSES = ("pending", "confirmed", "checked_in")

# Seen now: every user not yet in ONLINE came online (returned).
_SEEN_LUA = """
local came = {}
for i = 2, #ARGV do
  if redis.call('ZADD', KEYS[1], ARGV[1], ARGV[i]) == 1 then came[#came + 1] = ARGV[i] end
  redis.call('ZADD', KEYS[2], ARGV[1], ARGV[i])
end
return came
"""
# Not seen since ARGV[1]: they left ONLINE (returned with their last-seen time).
_GONE_LUA = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES')
for i = 1, #gone, 2 do redis.call('ZREM', KEYS[1], gone[i]) end
return gone
"""

log = logging.getLogger(__name__)


class Presence:
    """This process's share of the presence counts, and the sum over all processes."""

    def __init__(self, redis: Redis, hub: Hub, bus: EventBus | None = None, ttl: int = TTL_SECONDS) -> None:
        self.redis = redis
        self.ttl = ttl  # PRESENCE_OFFLINE_AFTER: online means seen within it
        # Open connections are refreshed well within the TTL, or a shorter one would drop them between refreshes.
        self.refresh_seconds = min(REFRESH_SECONDS, ttl / 3)
        self.hub = hub
        self.bus = bus  # where `presence.changed` goes (None: not announced)
        self._seen_script = redis.register_script(_SEEN_LUA)
        self._gone_script = redis.register_script(_GONE_LUA)
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

    async def closed(self, transport: str, user_id: uuid.UUID, role: str) -> None:
        """A connection closed here (it has already left the hub). The user was there until now:
        seen now, so that going offline is announced `ttl` s after the last connection closed, not
        up to 10 s earlier (the open stream's last refresh)."""
        self._counts_changed = True
        await self.seen(user_id, role)

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
                    pipe.expire(self.process_key, self.ttl)
                for role, users in seen.items():
                    pipe.zadd(f"{PREFIX}online:{role}", dict.fromkeys(users, now))
                await pipe.execute()
            await self._seen_now([u for users in seen.values() for u in users], now)
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
            pipe.expire(self.process_key, self.ttl)
            for role, users in online.items():
                pipe.zadd(f"{PREFIX}online:{role}", dict.fromkeys(users, now))
            for role in ROLES:
                pipe.zremrangebyscore(f"{PREFIX}online:{role}", 0, now - self.ttl)
            await pipe.execute()
        await self._seen_now([u for users in online.values() for u in users], now)

    async def expire(self) -> None:
        """Announce the users not seen for `TTL_SECONDS` as offline (every API process runs this
        every `EXPIRE_SECONDS`; the script hands each such user to one of them)."""
        gone: list[Any] = await self._gone_script(keys=[ONLINE], args=[time.time() - self.ttl])
        for user_id, at in zip(gone[::2], gone[1::2], strict=True):
            await self._announce(user_id.decode(), False, float(at))

    async def _seen_now(self, user_ids: list[str], now: float) -> None:
        """Record that these users were seen now, and announce those who were offline."""
        if not user_ids:
            return
        came: list[bytes] = await self._seen_script(keys=[ONLINE, LAST_SEEN], args=[now, *user_ids])
        # A burst of first connects (a deploy, a morning) is one read per ANNOUNCE_BATCH users, not one each.
        arrived = [u.decode() for u in came]
        for start in range(0, len(arrived), ANNOUNCE_BATCH):
            batch = arrived[start:start + ANNOUNCE_BATCH]
            shared = await self._sharing(batch)
            for user_id in batch:
                await self._tell(user_id, shared.get(user_id, set()), True, now)

    async def _announce(self, user_id: str, online: bool, seen_at: float) -> None:
        """`presence.changed` to everyone who shares a pending, confirmed or checked-in booking with
        the user: one ephemeral publish with all their channels, however many they are."""
        if self.bus is None:
            return
        await self._tell(user_id, (await self._sharing([user_id])).get(user_id, set()), online, seen_at)

    async def _sharing(self, user_ids: list[str]) -> dict[str, set[str]]:
        """For each user, the others who share a pending, confirmed or checked-in booking with them."""
        if self.bus is None or not user_ids:
            return {}
        statuses = ", ".join(f"'{s}'" for s in ACTIVE_STATUSES)
        marks = ", ".join("{}" for _ in user_ids)
        ids = [uuid.UUID(u) for u in user_ids]
        rows = await Booking.raw(
            f"SELECT owner_id AS who, customer_id AS other FROM bookings WHERE owner_id IN ({marks})"  # noqa: S608
            f" AND status IN ({statuses}) UNION SELECT customer_id AS who, owner_id AS other FROM bookings"
            f" WHERE customer_id IN ({marks}) AND status IN ({statuses})", *ids, *ids)
        shared: dict[str, set[str]] = {}
        for row in rows:
            who, other = str(row["who"]), str(row["other"])
            if who != other:
                shared.setdefault(who, set()).add(other)
        return shared

    async def _tell(self, user_id: str, others: set[str], online: bool, seen_at: float) -> None:
        if self.bus is not None and others:
            await self.bus.publish_ephemeral("presence.changed", [user_channel(o) for o in sorted(others)],
                                             PresenceChanged(uuid.UUID(user_id), online,
                                                             datetime.fromtimestamp(seen_at, UTC)))

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
        since = time.time() - self.ttl
        online = {role: int(await self.redis.zcount(f"{PREFIX}online:{role}", since, "+inf")) for role in ROLES}
        return {"online": online, "streams": streams}
