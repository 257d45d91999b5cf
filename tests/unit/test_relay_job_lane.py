"""The relay's job lane (app/outbox/relay.py), against a real Redis and a real SQLite file: events go
out even while jobs cannot be sent; job rows stay in the outbox until they are sent; and once RQ's
Redis answers again, every job goes out once, in row order."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from redis import Redis as SyncRedis

from app.db.engine import bind_engine, close_engine, engine_from_url, open_engine
from app.db.tables import OutboxEntry
from app.embedded_redis import EmbeddedRedis, free_port
from app.job_queue import DEFAULT_QUEUE, JobQueue
from app.lifespan import redis_client
from app.outbox.change import recorded_change
from app.outbox.relay import Relay
from app.realtime.bus import GLOBAL_STREAM, EventBus

JOB = "workers.jobs.sweep"


async def _scenario(data: Path, redis_url: str) -> tuple[list[str], list[bytes]]:
    engine = engine_from_url(f"sqlite:///{data / 'relay.sqlite3'}")
    bind_engine(engine)
    await open_engine(engine)
    await OutboxEntry.create_table()
    bus = EventBus(redis_client(redis_url), 3600)
    nowhere = JobQueue(SyncRedis(port=free_port(), socket_connect_timeout=1))  # nothing listens there
    relay = Relay(bus, nowhere)
    try:
        for n in (1, 2, 3):
            async with recorded_change(None) as change:
                change.publish("test.event", ["broadcast"], {"n": n})
                change.enqueue(JOB, job_id=f"lane-{n}")
        with pytest.raises(RuntimeError, match="jobs could not be sent"):
            await relay.drain()
        await relay.settle()
        assert len(await bus.redis.xrange(GLOBAL_STREAM)) == 3, "the events went out without the jobs"
        assert await OutboxEntry.count() == 3, "the job rows stay until their jobs are sent"

        relay.jobs = JobQueue(SyncRedis.from_url(redis_url))  # RQ's Redis is back
        assert await relay.drain() == 3
        await relay.settle()
        assert await OutboxEntry.count() == 0
        events = [fields[b"e"].decode() for _, fields in await bus.redis.xrange(GLOBAL_STREAM)]
        return events, relay.jobs.connection.lrange(f"rq:queue:{DEFAULT_QUEUE}", 0, -1)
    finally:
        await bus.redis.aclose()
        await close_engine(engine)


def test_jobs_that_cannot_be_sent_wait_in_order_and_do_not_hold_back_events(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", persist=False)
    try:
        events, queued = asyncio.run(_scenario(tmp_path, server.start()))
    finally:
        server.stop()
    assert len(events) == 3
    assert queued == [b"lane-1", b"lane-2", b"lane-3"]
