"""Logging for every process: one JSON object per line (or plain text for `bookwire up`), with the
request id and user id of the request being served, and the access log.

The standard library's logging with a small formatter, not structlog: uvicorn, RQ, rq-scheduler,
Piccolo and our modules all log through `logging` already, so one root handler with this formatter
covers them all, and there is nothing else to install. A line is encoded by msgspec.

The request's context is a mutable `RequestContext` in a context variable: the ASGI middleware
(`app/observe.py`) sets it, authentication fills in the user id (`note_user`), and every line
logged while the request is served (in its task or in tasks it started) carries both ids.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from contextvars import ContextVar
from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()


class RequestContext:
    """What every log line of one request carries."""

    __slots__ = ("request_id", "user_id")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.user_id: str | None = None


current_request: ContextVar[RequestContext | None] = ContextVar("bookwire_request", default=None)


def note_user(user_id: object) -> None:
    """Remember who the request being served is for (called where a token's user is found)."""
    context = current_request.get()
    if context is not None:
        context.user_id = str(user_id)


# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged too.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName", "color_message"}  # (uvicorn's copy of its message with terminal colours)


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", "request_id"?, "user_id"?, ...extra, "exception"?}`."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = current_request.get()
        if context is not None:
            line["request_id"] = context.request_id
            if context.user_id is not None:
                line["user_id"] = context.user_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(line).decode()


class TextFormatter(logging.Formatter):
    """`time level logger [request_id user_id] message`, for a person reading `bookwire up`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = current_request.get()
        if context is None:
            return text
        who = f"{context.request_id} user={context.user_id}" if context.user_id else context.request_id
        head, _, rest = text.partition(record.getMessage())  # the ids go just before the message
        return f"{head}[{who}] {record.getMessage()}{rest}"


def _timestamp(created: float) -> str:
    """RFC 3339 in UTC with milliseconds (cheaper than datetime.isoformat)."""
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"


class QuietPeriodicJobs(logging.Filter):
    """Drops RQ's INFO lines about the periodic jobs (a sweep every 10 s would log three lines each
    time); their failures are WARNING or ERROR and pass, as does every line about other jobs."""

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self.names = names

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        text = " ".join(str(arg) for arg in record.args) if isinstance(record.args, tuple) else ""
        return not any(name in text for name in self.names)


class WithoutTraceback(logging.Filter):
    """Turns a record's exception into `(ExceptionType: message)` at the end of its one line.

    For asyncpg's pool, which logs "Failed to restore the pool connection floor" with a full
    traceback every second while PostgreSQL is unreachable: the cause is all there is to know."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            record.msg, record.args = f"{record.getMessage()} ({type(error).__name__}: {error})", None
            record.exc_info = record.exc_text = None
        return True


PERIODIC_JOB_NAMES = ("bookwire-periodic-", "workers.jobs.sweep", "workers.jobs.cleanup")
"""The ids and functions of the periodic jobs (app/maintenance.py, app/job_queue.py), as RQ's lines
mention them: "default: workers.jobs.sweep() (bookwire-periodic-sweep)", "Successfully completed …"."""


def configure_logging(level: str = "info", format: str = "json") -> None:
    """One handler on the root logger, to stderr, for every library's logger; call once at start.
    `format` is "json" or "text"; `level` a level name (LOG_LEVEL)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's, RQ's and rq-scheduler's loggers add handlers of their own when they find none
    # (RQ: `setup_loghandlers` checks for an effective one, which the root's is); uvicorn is told
    # `log_config=None` (app/cli.py). Their lines all come here.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "rq.worker", "rq.job", "rq_scheduler.scheduler"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.propagate = True
    quiet = QuietPeriodicJobs(PERIODIC_JOB_NAMES)
    for name in ("rq.worker", "rq.job"):
        logging.getLogger(name).addFilter(quiet)
    logging.getLogger("asyncpg.pool").addFilter(WithoutTraceback())
    # Piccolo logs "Running Sqlite version …" each time an engine is built: once per process of
    # `bookwire up`, twice in `migrate`. Its warning for a too-old database is a warning, not this.
    logging.getLogger("piccolo.engine.base").setLevel(logging.WARNING)


_TOKEN = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id_from(header: bytes | None) -> str | None:
    """The client's `X-Request-ID` when it is a sane token (1-64 of `A-Z a-z 0-9 . _ : -`), else None."""
    if header is None or len(header) > 64:
        return None
    text = header.decode("latin-1")
    return text if _TOKEN.fullmatch(text) else None


SENSITIVE_QUERY_KEYS = re.compile(
    r"(^|&)((?:[^&=]*?)(?:token|password|secret|key|signature|code|auth)[^&=]*)=[^&]*", re.IGNORECASE)


def redact_query(query: bytes) -> str:
    """The query string with the values of token-, password-, key- and secret-like parameters
    replaced by `***` (the stream's `access_token=` among them)."""
    text = query.decode("latin-1")
    return SENSITIVE_QUERY_KEYS.sub(r"\1\2=***", text) if text else ""
