"""The in-process hub: which open connection reads which channel, and handing events to them.

The bus feeds each event once per process; `dispatch` finds the connections whose channels match
(each connection once, on the first matching channel of the event) and appends the SSE frame to
their bounded buffer. Nothing here waits: a connection that stops reading is closed once its
buffer holds more than `queue_size` events, and never slows the others or the publisher.

A frame for a stream whose writer is idle (parked, nothing queued) is written to its socket at
once when uvicorn serves it (app/realtime/connection.py): no task wake-up per delivery.

A single ticker per process (not a timer per connection) sends heartbeats and ends connections at
their deadline (token expiry, max age), so 10,000 idle streams cost one loop a second. Each stream
belongs to one of the heartbeat interval's one-second buckets, so heartbeats go out a bucket per
second instead of all in one tick.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import time
import uuid

from prometheus_client import Histogram

from app.errors import TooManyRequests
from app.realtime.connection import ServerCycle, abort, write_now
from app.realtime.events import Envelope, Event, control_frame, user_channel

HEARTBEAT_FRAME = b": ping\n\n"
TICK_SECONDS = 1.0
LIMIT_RETRY_AFTER_SECONDS = 10  # a refused connection: by then the client has usually closed another
CLOSED_USER_MEMORY_SECONDS = 60.0  # far longer than a connection takes from its account check to the hub
TRIM_AFTER_CLOSED = 500


def release_free_memory() -> None:
    """`malloc_trim(0)`: return the free pages of glibc's heaps to the OS (a no-op elsewhere)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):  # not glibc (musl, macOS): nothing to do
        return
    trim(0)


class Subscriber:
    """One open connection (SSE stream or held long-poll) and what is waiting to be written to it."""

    __slots__ = (
        "__weakref__",
        "_waiter",
        "beat",
        "channels",
        "closing",
        "cycle",
        "deadline",
        "deadline_reason",
        "ephemeral",
        "frames",
        "idle",
        "role",
        "task",
        "transport",
        "user_id",
        "wrote",
    )

    def __init__(self, user_id: uuid.UUID, role: str, channels: list[str], transport: str,
                 cycle: ServerCycle | None = None) -> None:
        self.channels = channels
        self.user_id = user_id
        self.role = role
        self.transport = transport
        # A list, not a deque: an empty deque costs ~600 bytes, and the writer takes all at once.
        self.frames: list[tuple[str | None, bytes]] = []
        self.closing: str | None = None  # why the server ends this connection ("" for no message)
        self.deadline: float | None = None
        self.deadline_reason = ""
        self.wrote = True  # something was written since the last heartbeat round
        self.task: asyncio.Task[object] | None = None
        # uvicorn's cycle of this request: "has the client left?" for the ticker, direct writes.
        self.cycle = cycle
        self.idle = False  # the writer waits with nothing in flight, so a frame may go past it
        self.beat = 0  # heartbeat bucket
        self.ephemeral: list[Envelope] | None = None  # a held long-poll's ephemeral events (SSE: frames)
        self._waiter: asyncio.Future[None] | None = None

    def push(self, event_id: str | None, frame: bytes) -> None:
        # Straight to the socket only while nothing is queued (order) and the writer is parked
        # (it may be replaying history, or between taking frames and sending them).
        if self.idle and not self.frames and self.cycle is not None and write_now(self.cycle, frame):
            if event_id is not None:
                self.wrote = True
            return
        self.frames.append((event_id, frame))
        self.wake()

    def close(self, reason: str) -> None:
        """Ask the connection to end, telling the client `reason` (empty: it is already gone)."""
        if self.closing is None:
            self.closing = reason
            self.wake()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter, self.idle = None, False
            if not waiter.done():
                waiter.set_result(None)

    def wait(self, idle: bool = False) -> asyncio.Future[None]:
        """Done once something is pushed or the connection is asked to close. `idle`: the writer has
        nothing in flight and no replay seam to guard, so pushes may write to the socket meanwhile.
        (A future rather than a coroutine: a parked stream then holds no coroutine frame for it.)"""
        waiter = asyncio.get_running_loop().create_future()
        if self.frames or self.closing is not None:
            waiter.set_result(None)
        else:
            self._waiter, self.idle = waiter, idle
        return waiter


class Hub:
    """Every connection open in this process, indexed by channel and by user.

    A connection's first channel is its user's own (`user:<id>`, see access.connection_channels):
    it is found through `_by_user`, keyed by that channel's name, and only its other channels go
    into `_by_channel`. At 10,000 streams of 10,000 users that saves a set per stream; a user's
    few connections sit in a list."""

    def __init__(self, queue_size: int, heartbeat_seconds: float, latency: Histogram | None = None,
                 max_per_user: int | None = None) -> None:
        self.queue_size = queue_size
        self.max_per_user = max_per_user  # open connections per user in this process (None: no limit)
        self.heartbeat_seconds = heartbeat_seconds
        self.latency = latency
        self._buckets = max(round(heartbeat_seconds / TICK_SECONDS), 1)
        self._next_bucket = itertools.cycle(range(self._buckets))  # spreads new streams evenly
        self._ticks = 0
        self._by_channel: dict[str, set[Subscriber]] = {}
        self._by_user: dict[str, list[Subscriber]] = {}  # by the user's own channel name
        self._open: dict[str, int] = {}  # connections by transport
        self._closed_users: dict[str, float] = {}  # user channel -> when close_user last ran for it
        self._peak = 0  # most connections open since the heap was last trimmed
        self.delivered = 0
        self.overflowed = 0

    def __len__(self) -> int:
        return sum(self._open.values())

    def add(self, sub: Subscriber) -> None:
        """Register a connection; 429 when its user already has `max_per_user` open here.

        Per process, not per cluster: counting across processes would cost a Redis round trip
        per connect and per close. Check and registration are one synchronous step, so concurrent
        connects cannot both pass the check."""
        own, *others = sub.channels
        assert own == user_channel(sub.user_id), "a connection's first channel is its user's own"
        mine = self._by_user.get(own)
        if self.max_per_user is not None and mine is not None and len(mine) >= self.max_per_user:
            raise TooManyRequests(
                f"This user already has {len(mine)} event connections (streams and held long-polls) open on "
                f"this server, the most allowed (MAX_STREAMS_PER_USER); close one, or retry later.",
                LIMIT_RETRY_AFTER_SECONDS,
            )
        sub.beat = next(self._next_bucket)
        self._by_user.setdefault(own, []).append(sub)
        self._open[sub.transport] = self._open.get(sub.transport, 0) + 1
        for channel in others:
            self._by_channel.setdefault(channel, set()).add(sub)

    def remove(self, sub: Subscriber) -> None:
        own, *others = sub.channels
        subs = self._by_user.get(own)
        if subs is not None and sub in subs:
            subs.remove(sub)
            self._open[sub.transport] -= 1
            if not subs:
                del self._by_user[own]
        for channel in others:
            asked = self._by_channel.get(channel)
            if asked is not None:
                asked.discard(sub)
                if not asked:
                    del self._by_channel[channel]

    def count(self, transport: str) -> int:
        """Open connections of `transport` ("sse" or "poll") in this process."""
        return self._open.get(transport, 0)

    def users_online(self) -> dict[str, set[str]]:
        """Ids (text) of the users with at least one open connection here, by role."""
        online: dict[str, set[str]] = {}
        for own, subs in self._by_user.items():
            for sub in subs:
                online.setdefault(sub.role, set()).add(own.removeprefix("user:"))
        return online

    def dispatch(self, event: Event) -> None:
        """Hand `event` to every matching connection, once each, as seen on its first matching channel."""
        if self.latency is not None:  # once per event, not per connection: publish (Redis clock) -> hand-off
            self.latency.observe(max(time.time() - int(event.id.partition("-")[0]) / 1000, 0.0))
        single = len(event.channels) == 1
        seen: set[Subscriber] = set()
        for channel in event.channels:
            own = self._by_user.get(channel)
            asked = self._by_channel.get(channel)
            if not own and not asked:
                continue
            frame = event.sse_frame(channel)
            # a copy: an overflowing subscriber leaves these collections while we go through them
            for sub in [*(own or ()), *(asked or ())]:
                if not single:
                    if sub in seen:
                        continue
                    seen.add(sub)
                if len(sub.frames) >= self.queue_size:
                    self._overflow(sub)
                    continue
                sub.push(event.id, frame)
                self.delivered += 1

    def dispatch_ephemeral(self, event: Event) -> None:
        """Hand an ephemeral event (no id) to the matching connections open now, once each: a
        stream gets a frame without an `id:` line, a held long-poll returns it with its batch."""
        seen: set[Subscriber] = set()
        for channel in event.channels:
            for sub in [*self._by_user.get(channel, ()), *self._by_channel.get(channel, ())]:
                if sub in seen or len(sub.frames) >= self.queue_size:
                    continue
                seen.add(sub)
                envelope = Envelope(None, event.type, channel, event.occurred_at, event.data)
                if sub.transport == "sse":
                    sub.push(None, control_frame(envelope))
                else:
                    sub.ephemeral = [*(sub.ephemeral or ()), envelope]
                    sub.wake()

    def _overflow(self, sub: Subscriber) -> None:
        """Too far behind: drop it (it reconnects and replays) rather than buffer without bound.

        Its socket is closed now, with what is queued for it discarded (not flushed first), so a
        client that reads nothing holds no server memory and gets no stale backlog later."""
        self.overflowed += 1
        self.remove(sub)
        sub.frames.clear()
        sub.close("")
        if sub.cycle is not None:
            abort(sub.cycle)
        if sub.task is not None:
            sub.task.cancel()  # its writer may be stuck waiting for the socket to drain

    def close_user(self, user_id: uuid.UUID, reason: str) -> None:
        """End every connection of `user_id` here (deactivation), and remember it for a while."""
        own = user_channel(user_id)
        self._closed_users[own] = time.monotonic()
        for sub in list(self._by_user.get(own, ())):
            sub.close(reason)

    def recently_closed(self, user_id: uuid.UUID) -> bool:
        """Whether `close_user` ran for `user_id` within the last `CLOSED_USER_MEMORY_SECONDS`.

        A connection that passed its account check just before a deactivation committed can join
        the hub just after the close went by: it then re-reads the account (access.still_active).
        Only then: a database read per connect cost a SQLite connection each (2,000 concurrent
        connects peaked at 440 MB instead of 215 MB)."""
        return user_channel(user_id) in self._closed_users

    def drop_channel(self, channel: str, keep_user: str) -> None:
        """Stop delivering `channel` to everyone but admins and the user `keep_user` (a resource that
        became inactive or was deleted: its other followers may no longer read it). Their streams go
        on with their other channels; a reconnect asking for it again is refused."""
        asked = self._by_channel.get(channel)
        for sub in list(asked or ()):
            if sub.role != "admin" and str(sub.user_id) != keep_user:
                asked.discard(sub)  # type: ignore[union-attr]
                sub.channels = [c for c in sub.channels if c != channel]
        if asked is not None and not asked:
            del self._by_channel[channel]

    def close_all(self, reason: str) -> None:
        for subs in list(self._by_user.values()):
            for sub in list(subs):
                sub.close(reason)

    def tick(self, now: float) -> None:
        """Close departed and expired connections; a comment line to each stream of this second's
        heartbeat bucket that wrote nothing during its last heartbeat interval (writers only flip a
        flag: no clock per send)."""
        bucket = self._ticks % self._buckets
        self._ticks += 1
        if self._closed_users:
            forget = now - CLOSED_USER_MEMORY_SECONDS
            self._closed_users = {own: at for own, at in self._closed_users.items() if at > forget}
        self._trim_after_mass_close()
        for subs in self._by_user.values():
            for sub in subs:
                if sub.cycle is not None and sub.cycle.disconnected:
                    sub.close("")
                elif sub.deadline is not None and now >= sub.deadline:
                    sub.close(sub.deadline_reason)
                elif sub.beat == bucket and sub.transport == "sse":
                    if not sub.wrote:
                        sub.push(None, HEARTBEAT_FRAME)
                    sub.wrote = False

    def _trim_after_mass_close(self) -> None:
        """Give freed heap back to the OS once many connections have closed.

        Measured: 2,000 streams opened at once and then closed left the API process at 200-440 MB
        (from 87 MB) with no object kept (no Subscriber, no uvicorn cycle left): glibc keeps freed
        memory in its per-thread arenas. `malloc_trim(0)` brought it back to 140 MB in 15-50 ms.
        So trim when the open count has fallen by `TRIM_AFTER_CLOSED` since its last peak."""
        open_now = len(self)
        if open_now > self._peak:
            self._peak = open_now
        elif self._peak - open_now >= TRIM_AFTER_CLOSED:
            self._peak = open_now
            release_free_memory()

    async def run_ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            self.tick(time.monotonic())
