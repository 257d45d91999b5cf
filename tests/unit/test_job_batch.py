"""JobBatch (app/job_queue.py) writes jobs the way rq-scheduler and RQ do, in one round trip: the
scheduler moves a batch-scheduled job to its queue with its function and arguments, shared jobs
stay one per second, cancelling forgets a job. On a real Redis; fails loudly if rq-scheduler's
internals (`_create_job`, `scheduled_jobs_key`) move."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job

from app.embedded_redis import EmbeddedRedis
from app.job_queue import DEFAULT_QUEUE, EMAIL_QUEUE, EXPIRE_BOOKING, FIRE_DUE_REMINDERS, SEND_EMAIL, JobBatch, JobQueue


@pytest.fixture
def jobs(tmp_path: Path) -> Iterator[JobQueue]:
    server = EmbeddedRedis(tmp_path, persist=False)
    connection = Redis.from_url(server.start())
    yield JobQueue(connection)
    connection.close()
    server.stop()


def test_a_batch_is_one_round_trip_and_the_scheduler_runs_what_it_scheduled(jobs: JobQueue) -> None:
    past = datetime.now(UTC) - timedelta(seconds=5)
    later = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=100_000)  # +300 ms: the same second
    batch = JobBatch(jobs)
    batch.schedule(past, EXPIRE_BOOKING, "booking-1", job_id="bookwire-expire-booking-1")
    batch.schedule(later, EXPIRE_BOOKING, "booking-2", job_id="bookwire-expire-booking-2")
    batch.schedule_shared([later, later + timedelta(milliseconds=300)], FIRE_DUE_REMINDERS, prefix="r")
    batch.schedule_shared([later], FIRE_DUE_REMINDERS, prefix="r")  # the same second again: one job
    batch.enqueue(SEND_EMAIL, "delivery-1", job_id="bookwire-email-delivery-1-1", queue=EMAIL_QUEUE)
    batch.cancel("bookwire-expire-booking-2")
    assert jobs.connection.zcard(jobs.scheduler.scheduled_jobs_key) == 0  # nothing sent before `send`
    batch.send()

    scheduled = {m.decode() for m in jobs.connection.zrange(jobs.scheduler.scheduled_jobs_key, 0, -1)}
    second = int((later.replace(microsecond=0) + timedelta(seconds=1)).timestamp())
    assert scheduled == {"bookwire-expire-booking-1", f"r-{second}"}
    assert not jobs.connection.exists(Job.key_for("bookwire-expire-booking-2"))

    jobs.scheduler.enqueue_jobs()  # what `bookwire scheduler` does every half second
    queued = Queue(DEFAULT_QUEUE, connection=jobs.connection).jobs
    assert [(j.id, j.func_name, j.args) for j in queued] == [
        ("bookwire-expire-booking-1", EXPIRE_BOOKING, ("booking-1",))]
    email = Queue(EMAIL_QUEUE, connection=jobs.connection).jobs
    assert [(j.id, j.func_name, j.args) for j in email] == [
        ("bookwire-email-delivery-1-1", SEND_EMAIL, ("delivery-1",))]
