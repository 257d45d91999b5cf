"""Long-poll: the same channels, order, replay and reset rules as the stream, one batch per request."""

from __future__ import annotations

import asyncio

from app.errors import BadRequest
from app.realtime.access import still_active
from app.realtime.bus import EventBus
from app.realtime.events import Envelope, Event, StreamReset, control_envelope, parse_event_id
from app.realtime.hub import Hub, Subscriber
from app.realtime.presence import Presence
from app.realtime.schemas import PollResult
from app.security import AuthUser

POLL_BATCH = 500


def _envelopes(events: list[Event], channels: list[str]) -> list[Envelope]:
    readable = set(channels)
    return [
        Envelope(e.id, e.type, e.first_channel(readable), e.occurred_at, e.data) for e in events
    ]


async def poll(bus: EventBus, hub: Hub, presence: Presence, user: AuthUser, channels: list[str],
               cursor: str | None, timeout: int) -> PollResult:
    """Events after `cursor` at once if there are any, else the first to arrive within `timeout` s."""
    if cursor is None:
        return PollResult(events=[], cursor=await bus.latest_id())
    if parse_event_id(cursor) is None:
        raise BadRequest("The cursor is not one this API returned; start again without `cursor`.",
                         errors=[{"field": "cursor", "message": "unreadable cursor"}])
    if not await bus.cursor_is_current(cursor):
        latest = await bus.latest_id()
        reset = control_envelope("stream.reset", StreamReset("unknown_or_expired_id", latest), latest)
        return PollResult(events=[reset], cursor=latest)
    events = await bus.read_after(channels, cursor, POLL_BATCH)
    if events or timeout == 0:
        return PollResult(events=_envelopes(events, channels), cursor=events[-1].id if events else cursor)
    sub = Subscriber(user.id, user.role, channels, "poll")
    hub.add(sub)  # before reading again, so nothing published in between is missed; 429 over the limit
    try:
        await presence.opened("poll", user.id, user.role)
        if hub.recently_closed(user.id) and not await still_active(user.id):
            sub.close("deactivated")  # deactivated while this poll was starting: do not hold it
        events = await bus.read_after(channels, cursor, POLL_BATCH)
        if not events:
            try:
                await asyncio.wait_for(sub.wait(), timeout)
            except TimeoutError:
                pass
            if sub.frames:  # woken by an event (not by a close)
                events = await bus.read_after(channels, cursor, POLL_BATCH)
    finally:
        hub.remove(sub)
        await presence.closed("poll", user.id, user.role)
    # Ephemeral events that came while it was held: returned too, and they move no cursor.
    return PollResult(events=[*_envelopes(events, channels), *(sub.ephemeral or ())],
                      cursor=events[-1].id if events else cursor)
