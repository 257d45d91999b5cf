"""What one outbox row asks for, as it is stored in `outbox.payload` (msgspec JSON, tagged by kind)."""

from __future__ import annotations

import msgspec


class EventEntry(msgspec.Struct, tag_field="kind", tag="event", frozen=True):
    """Publish one event on the bus (`data` is the JSON it carries, already encoded)."""

    type: str
    channels: list[str]
    data: msgspec.Raw
    occurred_at: str


class ControlEntry(msgspec.Struct, tag_field="kind", tag="control", frozen=True):
    """Tell every API process something about its connections (a user deactivated, a channel gone)."""

    message: dict[str, str]


class JobEntry(msgspec.Struct, tag_field="kind", tag="job", frozen=True):
    """Enqueue a job now (`at` empty), at a time (`at` one RFC 3339 time), or once per whole second
    of several times (`shared_prefix` set: one job per second whatever the number of rows)."""

    job: str
    args: list[str]
    job_id: str
    queue: str
    at: list[str] = []
    shared_prefix: str = ""


class CancelJobEntry(msgspec.Struct, tag_field="kind", tag="cancel", frozen=True):
    """Forget a scheduled job."""

    job_id: str


Entry = EventEntry | ControlEntry | JobEntry | CancelJobEntry
KINDS: dict[type[Entry], str] = {EventEntry: "event", ControlEntry: "control", JobEntry: "job", CancelJobEntry: "job"}

encode = msgspec.json.Encoder().encode
decode = msgspec.json.Decoder(Entry).decode
