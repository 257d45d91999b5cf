"""Recognise database errors: "this row already exists", and "the database cannot be reached"."""

from __future__ import annotations

import socket
import sqlite3

import asyncpg


def is_unique_violation(exc: BaseException) -> bool:
    """True for a UNIQUE constraint failure from SQLite or PostgreSQL."""
    if isinstance(exc, asyncpg.UniqueViolationError):
        return True
    return isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc)


# Errors that say the server is unreachable, restarting or full, rather than that a query is wrong.
_POSTGRES_OUTAGES = (
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.CannotConnectNowError,  # 57P03: starting up / shutting down
    asyncpg.AdminShutdownError,  # 57P01
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,  # the connection was closed under us (ConnectionDoesNotExistError, ...)
)


def is_database_outage(exc: BaseException) -> bool:
    """True when `exc` means the database is unreachable or unusable for now (answer 503, not 500)."""
    if isinstance(exc, (*_POSTGRES_OUTAGES, ConnectionError, socket.gaierror, TimeoutError)):
        return True
    # SQLite: locked past the busy timeout, the file gone or unreadable, a disk error.
    return isinstance(exc, sqlite3.OperationalError)
