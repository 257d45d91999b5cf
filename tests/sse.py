"""A small SSE client for tests, parsing the bytes on the wire as a browser would.

It speaks HTTP/1.1 over a raw socket (so the test sees exactly what the server sent: status line,
headers, chunked framing, comments), and splits events by the rules of the HTML spec: lines end in
CRLF, LF or CR; a blank line dispatches; `data:` lines join with LF; comments start with `:`.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class SSEEvent:
    """One dispatched event; `comment` is set for heartbeat comment lines instead."""

    id: str | None = None
    event: str = "message"
    data: str = ""
    retry: int | None = None
    comment: str | None = None

    @property
    def envelope(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.data)
        return result


@dataclass
class SSEStream:
    """An open stream: `status`, `headers`, and events as they come."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytearray = field(default_factory=bytearray)
    body: bytes = b""
    _buffer: str = ""
    _pending: SSEEvent = field(default_factory=SSEEvent)
    _data_lines: list[str] = field(default_factory=list)
    _ready: list[SSEEvent] = field(default_factory=list)
    chunked: bool = False
    closed: bool = False

    async def _read_body_bytes(self) -> bytes:
        if not self.chunked:
            data = await self.reader.read(65536)
            if not data:
                self.closed = True
            return data
        size_line = await self.reader.readline()
        if not size_line:
            self.closed = True
            return b""
        size = int(size_line.strip() or b"0", 16)
        if size == 0:
            await self.reader.readline()
            self.closed = True
            return b""
        data = await self.reader.readexactly(size)
        await self.reader.readexactly(2)
        return data

    def _feed(self, text: str) -> None:
        self._buffer += text
        while True:
            match = re.search(r"\r\n|\n|\r", self._buffer)
            if match is None or (match.group() == "\r" and match.end() == len(self._buffer)):
                return  # a lone CR at the end may be the first half of CRLF
            line, self._buffer = self._buffer[: match.start()], self._buffer[match.end():]
            self._line(line)

    def _line(self, line: str) -> None:
        if line == "":
            if self._data_lines or self._pending.id is not None or self._pending.event != "message":
                self._pending.data = "\n".join(self._data_lines)
                self._ready.append(self._pending)
            elif self._pending.retry is not None:
                self._ready.append(self._pending)
            self._pending, self._data_lines = SSEEvent(), []
            return
        if line.startswith(":"):
            self._ready.append(SSEEvent(comment=line[1:].strip()))
            return
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data_lines.append(value)
        elif name == "id":
            self._pending.id = value
        elif name == "event":
            self._pending.event = value
        elif name == "retry" and value.isdigit():
            self._pending.retry = int(value)

    async def next(self, timeout: float = 5.0, comments: bool = False) -> SSEEvent | None:
        """The next event (heartbeat comments only when asked); None when the server closed the stream."""
        async def take() -> SSEEvent | None:
            while True:
                while self._ready:
                    event = self._ready.pop(0)
                    if event.comment is None or comments:
                        return event
                if self.closed:
                    return None
                data = await self._read_body_bytes()
                self.raw += data
                self._feed(data.decode("utf-8"))

        return await asyncio.wait_for(take(), timeout)

    async def events(self, count: int, timeout: float = 10.0) -> list[SSEEvent]:
        """The next `count` real events (control events included, heartbeats skipped)."""
        got: list[SSEEvent] = []
        while len(got) < count:
            event = await self.next(timeout)
            if event is None:
                break
            if event.retry is not None and not event.data:
                continue
            got.append(event)
        return got

    def close(self) -> None:
        self.writer.close()


async def open_stream(url: str, headers: dict[str, str] | None = None) -> SSEStream:
    """GET `url` and read the status line and headers; the body is read as events are asked for."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port, limit=2**20)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", "Accept: text/event-stream",
             "Accept-Encoding: gzip, br"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    stream = SSEStream(reader, writer)
    status_line = await reader.readline()
    stream.status = int(status_line.split()[1])
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        stream.headers[name.strip().lower()] = value.strip()
    stream.chunked = stream.headers.get("transfer-encoding") == "chunked"
    if stream.status != 200:
        length = int(stream.headers.get("content-length", "0"))
        stream.body = await reader.readexactly(length) if length else b""
        if stream.chunked:
            stream.body = await stream._read_body_bytes()
        stream.close()
    return stream


def open_stuck_stream(base_url: str, token: str) -> socket.socket:
    """An SSE request on a socket with a tiny receive buffer, read up to the end of the headers only."""
    parts = urlsplit(base_url)
    assert parts.hostname is not None and parts.port is not None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect, so the window stays small
    sock.settimeout(5)
    sock.connect((parts.hostname, parts.port))
    request = (f"GET /v1/events/stream HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: text/event-stream\r\n"
               f"Authorization: Bearer {token}\r\n\r\n")
    sock.sendall(request.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        byte = sock.recv(1)  # one at a time: nothing past the headers is consumed
        assert byte, f"closed while reading headers: {head!r}"
        head += byte
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bool, int]:
    """Read everything the server sent; (closed by the server within `timeout`, bytes read)."""
    sock.settimeout(0.5)
    deadline, total = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, total
        if not chunk:
            return True, total
        total += len(chunk)
    return False, total
