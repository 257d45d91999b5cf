"""The relay: carries outbox rows out — events and control messages onto the bus, jobs into RQ and
rq-scheduler — in row order, then deletes them.

Every process that writes outbox rows runs one (API processes as a task, workers after each job
and in the sweep), woken at once by its own commits; API processes also look every
`POLL_SECONDS` for rows that another process committed and did not carry out (it died, or Redis
was down). Relays never coordinate: two relays may carry out the same row, and that is harmless —
an event's dedup key is its row's `key`, so the bus stores and delivers it once (the second publish
answers with the first id), and every job is idempotent. Order holds without a leader: rows of one
booking or resource are written under its row lock, so their ids follow its `version`; a relay
reads the rows in id order in one statement (whose snapshot holds every row committed before the
newest it returns), publishes them in that order, and deletes a row only after it went out.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from app.db.tables import OutboxEntry
from app.db.transactions import write_transaction
from app.job_queue import JobBatch, JobQueue
from app.outbox.entries import CancelJobEntry, ControlEntry, EventEntry, JobEntry, decode
from app.realtime.bus import EventBus, Publication

log = logging.getLogger(__name__)

BATCH = 500
POLL_SECONDS = 1.0
RETRY_SECONDS = (0.1, 0.2, 0.5)  # after a failure (Redis down): back within 2 s of Redis returning


def dedup_key(row_key: object) -> str:
    """The bus's dedup key of an outbox row."""
    return f"outbox:{row_key}"


class Relay:
    """Carries out this process's outbox rows as soon as they are committed, and anyone's left behind."""

    def __init__(self, bus: EventBus, jobs: JobQueue) -> None:
        self.bus = bus
        self.jobs = jobs
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._carried_out: set[int] = set()  # row ids gone out and not yet deleted
        self._deleter: asyncio.Task[None] | None = None
        self.relayed = 0
        self.woken = False  # set by `wake`, for processes that drain after their own work (workers)

    def wake(self) -> None:
        """Something was committed: carry it out now."""
        self.woken = True
        self._wake.set()

    async def run(self, poll_seconds: float = POLL_SECONDS) -> None:
        """Drain whenever woken, and every `poll_seconds` anyway; forever."""
        failures = 0
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), poll_seconds)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.drain()
                failures = 0
            except Exception as exc:  # Redis or the database is away: the rows wait, we retry soon
                log.warning("outbox relay: %s: %s; retrying", type(exc).__name__, exc)
                await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
                failures += 1
                self._wake.set()

    async def drain(self) -> int:
        """Carry out every row there is now, oldest first; how many went out.

        Rows are deleted by a task of their own (`_delete_carried_out`), so the next batch does not
        wait for a write — on SQLite, a write queues behind every request's transaction. Until then
        their ids are remembered here and skipped."""
        self.woken = False
        async with self._lock:
            total = 0
            while True:
                rows = await OutboxEntry.select(OutboxEntry.id, OutboxEntry.key, OutboxEntry.payload).order_by(
                    OutboxEntry.id).limit(BATCH + len(self._carried_out))
                rows = [row for row in rows if row["id"] not in self._carried_out][:BATCH]
                if rows:
                    await self._carry_out(rows)
                    self._carried_out.update(row["id"] for row in rows)
                    total += len(rows)
                    self.relayed += len(rows)
                if self._carried_out and (self._deleter is None or self._deleter.done()):
                    self._deleter = asyncio.create_task(self._delete_carried_out(), name="outbox-delete")
                if len(rows) < BATCH:
                    return total

    async def settle(self) -> None:
        """Wait until what went out is deleted too (a worker, whose loop stops between jobs)."""
        while self._deleter is not None and not self._deleter.done():
            await asyncio.shield(self._deleter)

    async def _delete_carried_out(self) -> None:
        while self._carried_out:
            ids = list(self._carried_out)
            try:
                async with write_transaction():
                    await OutboxEntry.delete().where(OutboxEntry.id.is_in(ids))
            except Exception as exc:  # the database is away: the next drain tries again
                log.warning("outbox relay could not delete %d rows: %s", len(ids), exc)
                return
            self._carried_out.difference_update(ids)

    async def _carry_out(self, rows: list[dict[str, Any]]) -> None:
        publications: list[Publication | dict[str, str]] = []
        jobs: list[JobEntry | CancelJobEntry] = []
        for row in rows:
            entry = decode(row["payload"])
            if isinstance(entry, EventEntry):
                publications.append(Publication(entry.type, entry.channels, entry.data, entry.occurred_at,
                                                dedup_key(row["key"])))
            elif isinstance(entry, ControlEntry):
                publications.append(entry.message)
            else:
                jobs.append(entry)
        # Two round trips at once: the events on the bus's connection, the jobs on RQ's (synchronous).
        await asyncio.gather(
            self.bus.publish_all(publications) if publications else asyncio.sleep(0),
            asyncio.to_thread(_send_jobs, self.jobs, jobs) if jobs else asyncio.sleep(0),
        )


def _send_jobs(queue: JobQueue, entries: list[JobEntry | CancelJobEntry]) -> None:
    """Hand the jobs to RQ / rq-scheduler in one round trip (synchronous Redis: called in a thread)."""
    batch = JobBatch(queue)
    for entry in entries:
        if isinstance(entry, CancelJobEntry):
            batch.cancel(entry.job_id)
        elif entry.shared_prefix:
            batch.schedule_shared([datetime.fromisoformat(at) for at in entry.at], entry.job,
                                  prefix=entry.shared_prefix)
        elif entry.at:
            batch.schedule(datetime.fromisoformat(entry.at[0]), entry.job, *entry.args, job_id=entry.job_id,
                           queue=entry.queue)
        else:
            batch.enqueue(entry.job, *entry.args, job_id=entry.job_id, queue=entry.queue)
    batch.send()
