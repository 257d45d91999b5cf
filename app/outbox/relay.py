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
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from app.db.tables import OutboxEntry
from app.db.transactions import write_transaction
from app.job_queue import JobBatch, JobQueue
from app.outbox.entries import CancelJobEntry, ControlEntry, EventEntry, JobEntry, decode
from app.realtime.bus import EventBus, Publication
from app.realtime.events import Event

log = logging.getLogger(__name__)

BATCH = 500
POLL_SECONDS = 1.0
RETRY_SECONDS = (0.1, 0.2, 0.5)  # after a failure (Redis down): back within 2 s of Redis returning
DELETE_DELAY_SECONDS = 0.05
DRAIN_INTERVAL_SECONDS = 0.02
"""A drain costs about as much for one row as for fifty (a read, Redis round trips, a thread hop for
the jobs): one drain per commit doubled the API's CPU per booking under load. A commit made less
than this long after the last drain waits for the rest of the interval (at most 20 ms more latency)."""


def dedup_key(row_key: object) -> str:
    """The bus's dedup key of an outbox row."""
    return f"outbox:{row_key}"


class Relay:
    """Carries out this process's outbox rows as soon as they are committed, and anyone's left behind."""

    def __init__(self, bus: EventBus, jobs: JobQueue, node: str | None = None,
                 after_publish: Callable[[list[Event]], Awaitable[object]] | None = None) -> None:
        self.bus = bus
        self.jobs = jobs
        self.node = node  # the database node the relay reads on (PostgreSQL: its own small pool)
        # Runs once a batch's events are published, before their rows may be deleted (the webhooks'
        # deliveries are recorded there): should it fail, the rows are carried out again.
        self.after_publish = after_publish
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        # Rows are known by `key` here, never by `id`: SQLite hands out an id again once the table
        # is empty, and deleting by a remembered id could delete a newer row that never went out.
        self._to_delete: set[uuid.UUID] = set()  # rows gone out, not yet deleted
        self._deleting: set[uuid.UUID] = set()  # rows gone out that a transaction is deleting right now
        # Rows deleted a moment ago, by the number of reads started before: a read that started
        # earlier may still return them (its snapshot predates the delete).
        self._deleted: dict[uuid.UUID, int] = {}
        self._reads = 0
        self._deleter: asyncio.Task[None] | None = None
        # Job rows handed to the job lane and not yet sent: skipped by reads until they are.
        self._sending: set[uuid.UUID] = set()
        self._job_lane: asyncio.Task[None] | None = None  # the last batch of jobs handed on
        self._lane_broken = False  # a batch failed: later ones step aside until the lane is idle
        self._lane_failures = 0
        self.relayed = 0
        self.woken = False  # set by `wake`, for processes that drain after their own work (workers)

    def wake(self) -> None:
        """Something was committed: carry it out now."""
        self.woken = True
        self._wake.set()

    def take_deletions(self) -> list[uuid.UUID]:
        """Rows gone out, for the caller's transaction to delete (each handed to one transaction only,
        so concurrent transactions never wait for each other's outbox rows); report with `deleted`."""
        keys = list(self._to_delete)
        self._to_delete.clear()
        self._deleting.update(keys)
        return keys

    def deleted(self, keys: list[uuid.UUID], committed: bool) -> None:
        """The transaction that took `keys` ended; if it rolled back, they are still to delete."""
        self._deleting.difference_update(keys)
        if not committed:
            self._to_delete.update(keys)
        else:
            self._deleted.update(dict.fromkeys(keys, self._reads))

    async def run(self, poll_seconds: float = POLL_SECONDS) -> None:
        """Drain whenever woken, and every `poll_seconds` anyway; forever."""
        failures = 0
        last = 0.0
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), poll_seconds)
            except TimeoutError:
                pass
            # At most one drain per DRAIN_INTERVAL_SECONDS: under load the commits of that moment share it.
            await asyncio.sleep(max(0.0, last + DRAIN_INTERVAL_SECONDS - time.monotonic()))
            last = time.monotonic()
            self._wake.clear()
            try:
                await self.drain(wait_for_jobs=False)
                failures = 0
            except Exception as exc:  # Redis or the database is away: the rows wait, we retry soon
                log.warning("outbox relay: %s: %s; retrying", type(exc).__name__, exc)
                await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
                failures += 1
                self._wake.set()

    async def drain(self, wait_for_jobs: bool = True) -> int:
        """Carry out every row there is now, oldest first; how many went out (or, with
        `wait_for_jobs` False, were handed on: see `_hand_jobs`).

        Rows that went out are deleted by the next change committed in this process (in its own
        transaction: `take_deletions`), or else by a task of their own a moment later — never by the
        drain, whose next batch would wait for the write (on SQLite, behind every request's
        transaction). Until they are deleted, their keys are remembered here and skipped."""
        self.woken = False
        failures = self._lane_failures
        total = await self._drain()
        if wait_for_jobs and self._job_lane is not None:
            await asyncio.shield(self._job_lane)
            if self._lane_failures != failures:
                raise RuntimeError("outbox relay: jobs could not be sent; their rows wait to be read again")
        return total

    async def _drain(self) -> int:
        async with self._lock:
            total = 0
            while True:
                read = self._reads
                self._reads += 1
                rows = await OutboxEntry.select(OutboxEntry.id, OutboxEntry.key, OutboxEntry.payload).order_by(
                    OutboxEntry.id).limit(BATCH + len(self._to_delete) + len(self._deleting) + len(self._sending)
                                          + len(self._deleted)).run(node=self.node)
                skip = self._to_delete | self._deleting | self._sending | self._deleted.keys()
                rows = [row for row in rows if row["key"] not in skip][:BATCH]
                # this read started after those deletions: later reads cannot return those rows
                self._deleted = {i: n for i, n in self._deleted.items() if n > read}
                if rows:
                    total += await self._carry_out(rows)
                self._schedule_delete()
                if len(rows) < BATCH:
                    return total

    async def settle(self) -> None:
        """Delete what went out now (a worker, whose loop stops between jobs, calls it after a job)."""
        await self._delete(self.take_deletions())

    async def _delete_later(self) -> None:
        await asyncio.sleep(DELETE_DELAY_SECONDS)  # under load, the next change deletes them for free
        await self._delete(self.take_deletions())

    async def _delete(self, keys: list[uuid.UUID]) -> None:
        if not keys:
            return
        committed = False
        try:
            async with write_transaction():
                await OutboxEntry.delete().where(OutboxEntry.key.is_in(keys))
            committed = True
        except Exception as exc:  # the database is away: the next drain tries again
            log.warning("outbox relay could not delete %d rows: %s", len(keys), exc)
        finally:
            self.deleted(keys, committed)

    def _schedule_delete(self) -> None:
        if self._to_delete and (self._deleter is None or self._deleter.done()):
            self._deleter = asyncio.create_task(self._delete_later(), name="outbox-delete")

    async def _carry_out(self, rows: list[dict[str, Any]]) -> int:
        """Publish the events of `rows` and hand their jobs to the job lane; how many rows that was."""
        publications: list[Publication | dict[str, str]] = []
        published: list[uuid.UUID] = []
        job_keys: list[uuid.UUID] = []
        jobs: list[JobEntry | CancelJobEntry] = []
        for row in rows:
            entry = decode(row["payload"])
            if isinstance(entry, EventEntry):
                publications.append(Publication(entry.type, entry.channels, entry.data, entry.occurred_at,
                                                dedup_key(row["key"])))
                published.append(row["key"])
            elif isinstance(entry, ControlEntry):
                publications.append(entry.message)
                published.append(row["key"])
            elif not self._lane_broken:  # while it is, job rows wait to be read again, in order
                jobs.append(entry)
                job_keys.append(row["key"])
        if jobs:
            self._hand_jobs(job_keys, jobs)
        if publications:
            ids = await self.bus.publish_all(publications)
            if self.after_publish is not None:
                events = [Event(event_id, p.type, p.channels, p.occurred_at, p.data)
                          for p, event_id in zip(publications, ids, strict=True)
                          if isinstance(p, Publication) and event_id is not None]
                if events:
                    await self.after_publish(events)
            self._to_delete.update(published)
            self.relayed += len(published)
        return len(published) + len(jobs)

    def _hand_jobs(self, keys: list[uuid.UUID], entries: list[JobEntry | CancelJobEntry]) -> None:
        """Send `entries` after the batches handed on before, without holding up the drain.

        Making RQ jobs takes a thread and milliseconds of CPU per job; the next drain's events must not
        wait for that. The lane keeps the jobs in row order (a reminder's schedule before its
        cancellation). If a batch fails, the ones queued behind it step aside too, and all their rows
        are read again — in order — once the lane is idle."""
        self._sending.update(keys)
        self._job_lane = asyncio.create_task(self._send_in_turn(self._job_lane, keys, entries), name="outbox-jobs")

    async def _send_in_turn(self, previous: asyncio.Task[None] | None, keys: list[uuid.UUID],
                            entries: list[JobEntry | CancelJobEntry]) -> None:
        try:
            if previous is not None:
                await previous  # never raises: failures are handled below
            if not self._lane_broken:
                await asyncio.to_thread(_send_jobs, self.jobs, entries)
                self._to_delete.update(keys)
                self.relayed += len(keys)
                self._schedule_delete()
        except Exception as exc:  # Redis is away: the rows stay, and are read again
            self._lane_broken = True
            self._lane_failures += 1
            log.warning("outbox relay could not send %d jobs: %s: %s; retrying", len(keys), type(exc).__name__, exc)
        finally:
            self._sending.difference_update(keys)
            if self._job_lane is asyncio.current_task() and self._lane_broken:  # the last one: start again
                self._lane_broken = False
                await asyncio.sleep(RETRY_SECONDS[0])
                self._wake.set()


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
