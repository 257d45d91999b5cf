"""Raw asyncio HTTP/1.1 clients shared by the benchmarks: Server-Sent Event streams, and a pool of
keep-alive connections for plain requests.

No HTTP library: httpx costs ~1-3 ms of CPU per request and far too much memory and CPU per stream
when thousands of streams are open, and on a 2-core machine the client competes with the server.
Both clients take one `time.time_ns()` reading per read from the socket, so that a receive time can
be compared with a send time taken in another process on the same machine.

The SSE protocol class came out of `bench/sse.py` (which subclasses it); `bench/conversations.py`
uses both clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

FD_LIMIT = 65536
STREAM_PATH = "/v1/events/stream"


def raise_fd_limit(limit: int = FD_LIMIT) -> int:
    """Raise RLIMIT_NOFILE (soft and, when allowed, hard) so that many sockets fit; returns the soft
    limit now in force. Children started afterwards inherit it (the API server holds as many
    sockets as the client)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for wanted in ((limit, max(limit, hard)), (min(limit, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, wanted)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def uvloop_run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on uvloop (cheaper per read and per write than asyncio's loop), or asyncio's if
    uvloop is missing."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# --------------------------------------------------------------------------------------------------
# Server-Sent Events


def stream_request(port: int, token: str, path: str = STREAM_PATH) -> bytes:
    """The HTTP/1.1 request that opens an event stream as the owner of `token`."""
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n").encode()


def parse_block(block: bytes) -> tuple[bytes | None, bytes | None, bytes | None]:
    """The `id:`, `event:` and `data:` values of one SSE block (None for a missing line)."""
    event_id = event_type = data = None
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            data = line[5:]
        elif line.startswith(b"id:"):
            event_id = line[3:].strip()
        elif line.startswith(b"event:"):
            event_type = line[6:].strip()
    return event_id, event_type, data


class SseProtocol(asyncio.Protocol):
    """One SSE connection: HTTP/1.1 response head, chunked transfer coding, SSE blocks.

    `ready` completes when the `retry:` line arrives (the stream is open) and fails if the
    connection ends or answers anything but 200 before that. Subclasses get every other block
    through `on_event` (with the time of the read it came in, `time.time_ns()`), heartbeat comments
    through `on_comment`, and `on_dropped` when an open stream ends."""

    __slots__ = ("chunk_left", "chunked", "crlf_due", "head", "pending", "ready", "request", "sse", "state",
                 "transport")

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.state = 0                  # 0 head, 1 body, 2 closed
        self.head = b""
        self.chunked = False
        self.chunk_left = 0
        self.crlf_due = False
        self.pending = b""              # an incomplete chunk-size line
        self.sse = b""                  # an incomplete SSE block
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # Hooks -----------------------------------------------------------------------------------------

    def on_event(self, block: bytes, now: int) -> None:
        """An SSE block that is neither a comment nor the `retry:` line (see `parse_block`)."""

    def on_comment(self) -> None:
        """A comment block (the server's heartbeat)."""

    def on_dropped(self) -> None:
        """The connection ended after the stream had opened."""

    # asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        was_open = self.state == 1 and self.ready.done() and not self.ready.cancelled()
        self.state = 2
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before `retry:` ({exc or 'EOF'})"))
        elif was_open:
            self.on_dropped()

    def abort(self) -> None:
        """Close at once (RST), without waiting for anything to be sent."""
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, message: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(message))
        self.abort()

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        if self.state == 0:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 65536:
                    self._fail("response head too long")
                return
            head, data = self.head[:end], self.head[end + 4:]
            self.head = b""
            try:
                status = int(head.split(b" ", 2)[1])
            except (IndexError, ValueError):
                self._fail("unreadable status line")
                return
            if status != 200:
                self._fail(f"HTTP {status}")
                return
            self.chunked = b"transfer-encoding: chunked" in head.lower()
            self.state = 1
            if not data:
                return
        if self.chunked:
            data = self._dechunk(data)
            if not data:
                return
        self._feed(data, now)

    def _dechunk(self, data: bytes) -> bytes:
        buf = self.pending + data if self.pending else data
        self.pending = b""
        out = []
        pos, size = 0, len(buf)
        while pos < size:
            if self.chunk_left:
                take = min(self.chunk_left, size - pos)
                out.append(buf[pos:pos + take])
                pos += take
                self.chunk_left -= take
                if not self.chunk_left:
                    self.crlf_due = True
                continue
            if self.crlf_due:
                if size - pos < 2:
                    self.pending = buf[pos:]
                    break
                pos += 2
                self.crlf_due = False
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                self.pending = buf[pos:]
                break
            length = int(buf[pos:eol].split(b";", 1)[0], 16)
            pos = eol + 2
            if length == 0:  # the server ended the response
                break
            self.chunk_left = length
        return out[0] if len(out) == 1 else b"".join(out)

    def _feed(self, payload: bytes, now: int) -> None:
        buf = self.sse + payload if self.sse else payload
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        blocks = buf.split(b"\n\n")
        self.sse = blocks.pop()
        for block in blocks:
            if not block:
                continue
            if block[0] == 58:  # ":" comment: heartbeat
                self.on_comment()
                continue
            if block.startswith(b"retry:"):
                if not self.ready.done():
                    self.ready.set_result(None)
                continue
            self.on_event(block, now)


async def open_stream(stream: SseProtocol, port: int, timeout: float, host: str = "127.0.0.1") -> float:
    """Connect `stream` and wait for its `retry:` line; milliseconds from the TCP connect's start.
    On failure or timeout the connection is aborted and the error raised."""
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    try:
        await asyncio.wait_for(loop.create_connection(lambda: stream, host, port), timeout)
        await asyncio.wait_for(stream.ready, max(0.1, timeout - (time.perf_counter() - started)))
    except BaseException:
        stream.abort()
        raise
    return (time.perf_counter() - started) * 1000


# --------------------------------------------------------------------------------------------------
# Plain requests over keep-alive connections


@dataclass(slots=True)
class Answer:
    """One request's outcome: status (0 for a transport failure), body, and when it was written to
    the socket and when its answer was complete (`time.time_ns()`)."""

    status: int
    body: bytes
    sent_ns: int
    done_ns: int
    error: str = ""


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time (no pipelining)."""

    __slots__ = ("buf", "closed", "idle_since", "keep", "pending", "sent_ns", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.pending: asyncio.Future[Answer] | None = None
        self.sent_ns = 0
        self.closed = False
        self.keep = True                # False once the server said `Connection: close`
        self.idle_since = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.pending is not None and not self.pending.done():
            self.pending.set_result(Answer(0, b"", self.sent_ns, time.time_ns(), f"closed: {exc or 'EOF'}"))

    def send(self, request: bytes) -> asyncio.Future[Answer]:
        """Write one request; the future completes with its answer (or a transport failure)."""
        assert self.transport is not None and self.pending is None
        self.pending = asyncio.get_running_loop().create_future()
        self.buf = b""
        self.sent_ns = time.time_ns()
        self.transport.write(request)
        return self.pending

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.pending is None:
            return
        head = self.buf[:end].lower()
        body = self.buf[end + 4:]
        try:
            status = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError):
            self._finish(Answer(0, b"", self.sent_ns, now, "unreadable status line"))
            return
        position = head.find(b"\r\ncontent-length:")
        if position >= 0:
            line_end = head.find(b"\r\n", position + 2)
            length = int(head[position + 17:line_end if line_end >= 0 else len(head)])
            if len(body) < length:
                return
            body = body[:length]
        elif b"\r\ntransfer-encoding: chunked" in head:
            if not (body.endswith(b"\r\n0\r\n\r\n") or body == b"0\r\n\r\n"):
                return
            body = _dechunk_whole(body)
        elif status not in (204, 304) and not 100 <= status < 200:
            return  # a body that ends with the connection: wait for connection_lost (not used by Bookwire)
        if b"\r\nconnection: close" in head:
            self.keep = False
        self._finish(Answer(status, body, self.sent_ns, now))

    def _finish(self, answer: Answer) -> None:
        pending, self.pending = self.pending, None
        self.buf = b""
        self.idle_since = time.monotonic()
        if pending is not None and not pending.done():
            pending.set_result(answer)

    def abort(self) -> None:
        """Close at once."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def _dechunk_whole(body: bytes) -> bytes:
    """A complete chunked body, decoded."""
    out: list[bytes] = []
    pos = 0
    while True:
        eol = body.find(b"\r\n", pos)
        length = int(body[pos:eol].split(b";", 1)[0], 16)
        if length == 0:
            return b"".join(out)
        out.append(body[eol + 2:eol + 2 + length])
        pos = eol + 2 + length + 2


class RequestPool:
    """Up to `max_connections` keep-alive connections to one server; a request takes the most
    recently used idle one (so a few connections stay hot under a steady load), opens a new one
    while below the limit, or else waits its turn.

    A connection idle for longer than `idle_timeout` is closed instead of reused: uvicorn closes
    idle connections after 5 s, and a request written just as the server closes is lost (the
    keep-alive race that `bench/bookings.py` ran into with httpx's pool)."""

    def __init__(self, port: int, max_connections: int = 64, idle_timeout: float = 3.0,
                 host: str = "127.0.0.1") -> None:
        self.host, self.port = host, port
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.idle: list[HttpConnection] = []
        self.size = 0                   # connections open or being opened
        self.waiters: list[asyncio.Future[HttpConnection | None]] = []
        self.opened = 0                 # connections ever opened (a figure for the report)

    async def _acquire(self) -> HttpConnection | None:
        """An idle connection, a new one, or (at the limit) the next one released; None means the
        caller may open one itself (a slot became free)."""
        now = time.monotonic()
        while self.idle:
            connection = self.idle.pop()
            if connection.closed or not connection.keep or now - connection.idle_since > self.idle_timeout:
                self._discard(connection)
                continue
            return connection
        if self.size >= self.max_connections:
            waiter: asyncio.Future[HttpConnection | None] = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            return await waiter
        return None

    async def _connect(self) -> HttpConnection:
        self.size += 1
        try:
            _transport, connection = await asyncio.get_running_loop().create_connection(
                HttpConnection, self.host, self.port)
        except BaseException:
            self.size -= 1
            self._wake_one(None)
            raise
        self.opened += 1
        return connection

    def _discard(self, connection: HttpConnection) -> None:
        connection.abort()
        self.size -= 1
        self._wake_one(None)

    def _wake_one(self, connection: HttpConnection | None) -> bool:
        while self.waiters:
            waiter = self.waiters.pop(0)
            if not waiter.done():
                waiter.set_result(connection)
                return True
        return False

    def _release(self, connection: HttpConnection) -> None:
        if connection.closed or not connection.keep:
            self._discard(connection)
        elif not self._wake_one(connection):
            self.idle.append(connection)

    async def request(self, request: bytes, timeout: float = 60.0) -> Answer:
        """Send one complete request (bytes) and wait for its answer; a transport failure or a
        timeout is an `Answer` with status 0 and `error` set, never an exception."""
        try:
            connection = await self._acquire()
            if connection is None:
                connection = await self._connect()
        except OSError as exc:
            return Answer(0, b"", time.time_ns(), time.time_ns(), f"connect: {type(exc).__name__}: {exc}")
        future = connection.send(request)
        try:
            answer = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            connection.abort()
            self._release(connection)
            return Answer(0, b"", connection.sent_ns, time.time_ns(), "timeout")
        self._release(connection)
        return answer

    def close(self) -> None:
        """Close every idle connection (requests in flight end with a transport failure)."""
        for connection in self.idle:
            with contextlib.suppress(Exception):
                connection.abort()
        self.idle.clear()
        for waiter in self.waiters:
            if not waiter.done():
                waiter.cancel()


def http_request(method: str, path: str, port: int, token: str | None = None, body: bytes | None = None,
                 content_type: str = "application/json") -> bytes:
    """One HTTP/1.1 request as bytes (keep-alive is HTTP/1.1's default)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    if body is not None:
        lines.append(f"Content-Type: {content_type}")
    lines.append(f"Content-Length: {len(body or b'')}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
