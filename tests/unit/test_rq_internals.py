"""What workers/commands.py relies on in RQ's worker (rq pinned to 2.12): a stop asked for (SIGTERM,
SIGINT) sets `_shutdown_requested_date`, and `work()` returns, rather than raises, after an
unhandled error such as a lost Redis. Read from RQ's source, so that it fails loudly if they move."""

import inspect

from rq.worker.base import BaseWorker


def test_a_requested_stop_is_dated_and_the_date_starts_unset() -> None:
    assert "self._shutdown_requested_date: datetime | None = None" in inspect.getsource(BaseWorker.__init__)
    assert "self._shutdown_requested_date = now()" in inspect.getsource(BaseWorker.request_stop)


def test_work_returns_after_an_unhandled_error() -> None:
    work = inspect.getsource(BaseWorker.work)
    quitting = work.index("found an unhandled exception, quitting")
    assert work.index("break", quitting) - quitting < 200
