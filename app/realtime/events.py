"""The wire format of events: channel names, the envelope, and SSE framing.

An event is published once, with one id, to several channels. What a connection receives is the
envelope `{"id", "type", "channel", "occurred_at", "data"}` where `channel` is the first of the
event's channels that the connection reads. `data` stays pre-encoded JSON end to end, so fanning an
event out to many connections costs a byte concatenation per distinct channel, not an encode per
connection. msgspec escapes every control character inside JSON strings, so user text can never
add a line, field or event to an SSE frame; an integrator's `type` is checked by its schema
(app/realtime/schemas.py, no newline can pass) and Bookwire's own types are constants.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Literal

import msgspec

ROLES = ("customer", "provider", "admin")
BROADCAST = "broadcast"
EVENT_ID = re.compile(r"^(\d{1,15})-(\d{1,15})$")
_ROLE_CHANNEL = re.compile(r"^role:(customer|provider|admin)$")
_ID_CHANNEL = re.compile(r"^(user|resource):([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")


def user_channel(user_id: uuid.UUID | str) -> str:
    return f"user:{user_id}"


_ROLE_CHANNELS = {role: f"role:{role}" for role in ROLES}  # one string, not one per connection


def role_channel(role: str) -> str:
    return _ROLE_CHANNELS.get(role) or f"role:{role}"


def resource_channel(resource_id: uuid.UUID | str) -> str:
    return f"resource:{resource_id}"


def is_channel(name: str) -> bool:
    """True for `broadcast`, `role:<role>`, `user:<uuid>` or `resource:<uuid>` (lower-case uuid)."""
    # fullmatch: `$` alone would also match before a final newline ("role:customer\n")
    return name == BROADCAST or bool(_ROLE_CHANNEL.fullmatch(name) or _ID_CHANNEL.fullmatch(name))


def parse_event_id(text: str) -> tuple[int, int] | None:
    """`(milliseconds, sequence)` of a Redis stream id such as `1700000000000-3`, or None."""
    match = EVENT_ID.fullmatch(text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def rfc3339(moment: datetime) -> str:
    """`moment` (aware) in UTC as RFC 3339 with `Z`, as every timestamp in an event is written."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def now_rfc3339() -> str:
    return rfc3339(datetime.now(UTC))


class Event(msgspec.Struct, frozen=True, array_like=True):
    """One published event as stored and passed around: `data` is raw JSON."""

    id: str
    type: str
    channels: list[str]
    occurred_at: str
    data: msgspec.Raw

    def first_channel(self, readable: set[str]) -> str:
        """The first of this event's channels that a connection reading `readable` reads."""
        return next(c for c in self.channels if c in readable)

    def envelope(self, channel: str | None) -> bytes:
        """The client-facing JSON envelope, as seen on `channel`."""
        return msgspec.json.encode(Envelope(self.id, self.type, channel, self.occurred_at, self.data))

    def sse_frame(self, channel: str | None) -> bytes:
        """`id:`, `event:` and `data:` lines for this event as seen on `channel`."""
        return b"id: %s\nevent: %s\ndata: %s\n\n" % (
            self.id.encode(), self.type.encode(), self.envelope(channel)
        )


class Envelope(msgspec.Struct, frozen=True):
    """What clients receive, identical on every transport."""

    id: str | None
    type: str
    channel: str | None
    occurred_at: str
    data: msgspec.Raw


ResetReason = Literal["unknown_or_expired_id", "too_far_behind"]
ClosingReason = Literal["token_expired", "deactivated", "shutdown", "max_age"]


class PresenceChanged(msgspec.Struct):
    """`presence.changed`'s data (ephemeral): a user who shares an active booking with you came or went."""

    user_id: uuid.UUID
    online: bool
    last_seen_at: datetime


class StreamReset(msgspec.Struct):
    """`stream.reset`'s data: replay from the client's id is impossible; refetch over REST and go on
    from `cursor` (also the envelope's id)."""

    reason: ResetReason
    cursor: str


class StreamClosing(msgspec.Struct):
    """`stream.closing`'s data: the server ends the stream; reconnect with a fresh token and the last id."""

    reason: ClosingReason


def control_envelope(event_type: str, data: StreamReset | StreamClosing, event_id: str | None = None) -> Envelope:
    """`stream.reset` (with the id to continue from) or `stream.closing` (no id, moves no cursor)."""
    return Envelope(event_id, event_type, None, now_rfc3339(), msgspec.Raw(msgspec.json.encode(data)))


def control_frame(envelope: Envelope) -> bytes:
    """A control envelope as an SSE frame; without an id line when it has no id."""
    id_line = b"id: %s\n" % envelope.id.encode() if envelope.id else b""
    return b"%sevent: %s\ndata: %s\n\n" % (id_line, envelope.type.encode(), msgspec.json.encode(envelope))
