"""Wire types of the event endpoints."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from app.realtime.events import Envelope
from app.wire import END, NO_CONTROLS

EventType = Annotated[str, msgspec.Meta(max_length=100, pattern=rf"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+{END}")]
Channel = Annotated[str, msgspec.Meta(max_length=100)]
DedupKey = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=NO_CONTROLS)]


class EventPublish(msgspec.Struct, forbid_unknown_fields=True):
    """A custom event from an integrator."""

    type: EventType
    channels: Annotated[list[Channel], msgspec.Meta(min_length=1, max_length=50)]
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    dedup_key: DedupKey | None = None


class PublishResult(msgspec.Struct):
    id: str
    deduplicated: bool


class PollResult(msgspec.Struct):
    events: list[Envelope]
    cursor: str
