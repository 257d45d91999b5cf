"""What uvicorn serves the API with: its httptools protocol, with a limit on the request head.

uvicorn's default HTTP implementation (httptools) takes a request head of any size: httptools
grows each header by concatenation, so a single 128 MB header took 22 s of one core to parse and
stalled every request of the process meanwhile. uvicorn has no option for it (`h11`'s
`h11_max_incomplete_event_size` exists, but h11 is pure Python and keeps no `chunked_encoding`,
which the hub's direct writes rely on: see app/realtime/connection.py). So this protocol counts
the bytes that arrive while a request's head is incomplete and, past `MAX_REQUEST_HEADER_BYTES`,
answers 431 (a problem document) and stops reading that connection.

It reaches into uvicorn's `HttpToolsProtocol` (`data_received`, the `on_message_begin` and
`on_headers_complete` parser callbacks, `transport`, `cycle`): uvicorn's minor version is pinned in
pyproject.toml, and tests/unit/test_server_internals.py fails loudly when those change.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from app.errors import PROBLEM_MEDIA_TYPE, PROBLEM_TYPE_BASE

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover  # no httptools (e.g. PyPy): uvicorn's h11 limit applies instead
    HttpToolsProtocol = None  # type: ignore[assignment, misc]

LINGER_SECONDS = 2.0
"""After a 431, how long the rest of the client's request is read and dropped before the socket
closes: closing with unread input resets the connection, and the client may never see the 431."""


def head_too_large_response(limit: int) -> bytes:
    """The whole HTTP/1.1 431 answer, a problem document like every other error of the API."""
    body = msgspec.json.encode({
        "type": PROBLEM_TYPE_BASE + "request-header-too-large",
        "title": "Request header fields too large",
        "status": 431,
        "detail": f"The request line and headers must fit in {limit} bytes (MAX_REQUEST_HEADER_BYTES).",
    })
    head = (f"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: {PROBLEM_MEDIA_TYPE}\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("ascii") + body


def http_protocol(max_head_bytes: int) -> Any:
    """The protocol class to give `uvicorn.Config(http=...)`; "auto" when httptools is missing."""
    if HttpToolsProtocol is None:  # pragma: no cover
        return "auto"

    class HeadLimitedHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol that answers 431 to a request head over `max_head_bytes`."""

        # Slots, not the instance dict: four more entries would grow the dict of every connection
        # (10,000 idle streams are 10,000 of these).
        __slots__ = ("_began_in_chunk", "_head_bytes", "_in_head", "_refused")

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._in_head = True  # the next bytes start a request's head
            self._head_bytes = 0
            self._began_in_chunk = False
            self._refused = False

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # lingering after a 431: drop the rest unread
            self._began_in_chunk = False
            super().data_received(data)
            if not self._in_head or self.parser is None or self.transport.is_closing():
                return
            # Bytes of this chunk that belong to the head: all of it, unless the head began inside
            # it (then at most all of it: an over-count only when a pipelined request follows a
            # body in the same read, and only by that read).
            self._head_bytes = len(data) if self._began_in_chunk else self._head_bytes + len(data)
            if self._head_bytes > max_head_bytes:
                self._refuse()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head, self._head_bytes, self._began_in_chunk = True, 0, True

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def _refuse(self) -> None:
            self._refused = True
            self.logger.warning("Request head over %d bytes: answered 431.", max_head_bytes)
            transport: asyncio.Transport = self.transport
            if self.cycle is not None and not self.cycle.response_complete:
                transport.abort()  # a pipelined request behind one still being answered: no clean way to say it
                return
            transport.write(head_too_large_response(max_head_bytes))
            if transport.can_write_eof():
                transport.write_eof()  # the answer, then FIN; what the client still sends is dropped
            self.loop.call_later(LINGER_SECONDS, transport.close)

    return HeadLimitedHttpToolsProtocol
