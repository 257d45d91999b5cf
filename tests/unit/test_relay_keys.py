"""The relay against a real Redis and a real SQLite file, in one process: two relays carrying out
the same rows deliver each event once, and a relay never deletes a row it did not carry out — also
when SQLite hands out a deleted row's id again (it does once the table is empty)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from redis import Redis as SyncRedis

from app.db.engine import bind_engine, close_engine, engine_from_url, open_engine
from app.db.tables import OutboxEntry
from app.embedded_redis import EmbeddedRedis
from app.job_queue import JobQueue
from app.lifespan import redis_client
from app.outbox.change import recorded_change
from app.outbox.relay import Relay
from app.realtime.bus import GLOBAL_STREAM, EventBus


async def _scenario(data: Path, redis_url: str) -> list[str]:
    engine = engine_from_url(f"sqlite:///{data / 'relay.sqlite3'}")
    bind_engine(engine)
    await open_engine(engine)
    await OutboxEntry.create_table()
    bus = EventBus(redis_client(redis_url), 3600)
    jobs = JobQueue(SyncRedis.from_url(redis_url))
    first, second = Relay(bus, jobs), Relay(bus, jobs)
    try:
        async with recorded_change(None) as change:
            change.publish("test.first", ["broadcast"], {"n": 1})
        assert await first.drain() == 1 and await second.drain() == 1  # both carry it out: one event
        await second.settle()  # the second deletes it; the first still means to
        assert await OutboxEntry.count() == 0

        async with recorded_change(None) as change:  # SQLite gives the new row the deleted row's id
            change.publish("test.second", ["broadcast"], {"n": 2})
        reused = await OutboxEntry.select(OutboxEntry.id).first()
        assert reused is not None and reused["id"] == 1
        async with recorded_change(first) as change:  # deletes what `first` carried out, with this change
            change.publish("test.third", ["broadcast"], {"n": 3})
        assert await OutboxEntry.count() == 2, "a relay deleted a row it never carried out"
        assert await first.drain() == 2
        await first.settle()
        assert await OutboxEntry.count() == 0
        rows = await bus.redis.xrange(GLOBAL_STREAM)
        return [fields[b"e"].decode() for _, fields in rows]
    finally:
        await bus.redis.aclose()
        jobs.connection.close()
        await close_engine(engine)


def test_each_row_goes_out_once_and_only_carried_out_rows_are_deleted(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", persist=False)
    try:
        bodies = asyncio.run(_scenario(tmp_path, server.start()))
    finally:
        server.stop()
    types = [body.split('"')[1] for body in bodies]
    assert types == ["test.first", "test.second", "test.third"], bodies
