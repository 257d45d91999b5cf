"""Recording a change's side effects in its own transaction.

    async with recorded_change(effects.relay) as change:
        ...                                   # the change itself, under its row locks
        change.publish("booking.confirmed", channels, booking)
        change.enqueue(SEND_EMAIL, str(delivery_id), job_id=...)

Everything recorded is written as `outbox` rows by one INSERT just before the COMMIT, so either the
change and all it sets in motion are stored, or nothing is. After the commit the process's relay is
woken to carry the rows out at once; should this process die first, another relay finds them.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec

from app.db.prepared import insert_rows
from app.db.tables import OutboxEntry
from app.db.transactions import write_transaction
from app.job_queue import DEFAULT_QUEUE
from app.outbox.entries import KINDS, CancelJobEntry, ControlEntry, Entry, EventEntry, JobEntry, encode
from app.realtime.events import now_rfc3339


class Relay(Protocol):
    """What a change needs of its process's relay (app/outbox/relay.py)."""

    def wake(self) -> None: ...

    def take_deletions(self) -> list[uuid.UUID]: ...

    def deleted(self, keys: list[uuid.UUID], committed: bool) -> None: ...


def _time(when: datetime) -> str:
    return when.astimezone(UTC).isoformat()


class Change:
    """The side effects of one change, collected while it runs and written with it."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []

    def publish(self, event_type: str, channels: list[str], data: Any) -> None:
        """Publish `event_type` to `channels` once the change is committed."""
        raw = data if isinstance(data, msgspec.Raw) else msgspec.Raw(msgspec.json.encode(data))
        self.entries.append(EventEntry(event_type, list(dict.fromkeys(channels)), raw, now_rfc3339()))

    def control(self, message: dict[str, str]) -> None:
        """Send a control message to every API process once the change is committed."""
        self.entries.append(ControlEntry(message))

    def enqueue(self, job: str, *args: str, job_id: str, queue: str = DEFAULT_QUEUE) -> None:
        """Run `job(*args)` on a worker once the change is committed."""
        self.entries.append(JobEntry(job, list(args), job_id, queue))

    def schedule(self, when: datetime, job: str, *args: str, job_id: str, queue: str = DEFAULT_QUEUE) -> None:
        """Run `job(*args)` at `when` (scheduling the same `job_id` again replaces it)."""
        self.entries.append(JobEntry(job, list(args), job_id, queue, at=[_time(when)]))

    def schedule_shared(self, whens: Iterable[datetime], job: str, *, prefix: str) -> None:
        """Run `job()` at each of `whens`, one job per whole second (see JobBatch.schedule_shared)."""
        self.entries.append(JobEntry(job, [], "", DEFAULT_QUEUE, at=[_time(w) for w in whens], shared_prefix=prefix))

    def cancel(self, job_id: str) -> None:
        """Forget the scheduled job `job_id` once the change is committed."""
        self.entries.append(CancelJobEntry(job_id))

    async def write(self) -> None:
        """Store the entries as outbox rows (inside the change's transaction), in recording order."""
        if self.entries:
            now = datetime.now(UTC)
            await insert_rows(OutboxEntry, [
                {"key": uuid.uuid4(), "kind": KINDS[type(entry)], "payload": encode(entry).decode(), "created_at": now}
                for entry in self.entries
            ])


@asynccontextmanager
async def recorded_change(relay: Relay | None) -> AsyncIterator[Change]:
    """A write transaction whose side effects are recorded with it; wakes `relay` after the commit.

    It also deletes the outbox rows `relay` has carried out since the last change: the relay never
    waits for a write of its own while changes are being made."""
    change = Change()
    done: list[uuid.UUID] = []
    committed = False
    try:
        async with write_transaction():
            yield change
            await change.write()
            done = relay.take_deletions() if relay is not None else []
            if done:
                await OutboxEntry.delete().where(OutboxEntry.key.is_in(done))
        committed = True
    finally:
        if done and relay is not None:
            relay.deleted(done, committed)
    if change.entries and relay is not None:
        relay.wake()
