"""The scheduler's short lock (workers/queues.py) against the rq-scheduler it overrides, on a real
Redis: a lock left by a killed scheduler frees the others within a second."""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from rq_scheduler import Scheduler

from app.embedded_redis import EmbeddedRedis
from workers.queues import SCHEDULER_LOCK_MILLISECONDS, build_scheduler


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    server = EmbeddedRedis(tmp_path, persist=False)
    connection = Redis.from_url(server.start())
    yield connection
    connection.close()
    server.stop()


def test_rq_scheduler_takes_turns_the_way_the_override_expects() -> None:
    run = inspect.getsource(Scheduler.run)
    assert "self.acquire_lock()" in run and "self.remove_lock()" in run
    assert "self._lock_acquired" in inspect.getsource(Scheduler.remove_lock)
    assert Scheduler.scheduler_lock_key == "rq:scheduler_lock"


def test_a_dead_schedulers_lock_expires_within_a_second(redis: Redis) -> None:
    dead, alive = build_scheduler(redis), build_scheduler(redis)
    assert dead.acquire_lock()  # and then it is SIGKILLed: nobody removes the lock
    assert not alive.acquire_lock()
    assert 0 < redis.pttl(Scheduler.scheduler_lock_key) <= SCHEDULER_LOCK_MILLISECONDS
    deadline = time.monotonic() + 2
    while not alive.acquire_lock():
        assert time.monotonic() < deadline, "the lock outlived 2 s"
        time.sleep(0.05)
    alive.remove_lock()
    assert redis.get(Scheduler.scheduler_lock_key) is None
