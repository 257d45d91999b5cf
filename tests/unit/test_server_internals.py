"""The parts of uvicorn that app/server.py and app/realtime/connection.py reach into.

uvicorn's minor version is pinned in pyproject.toml for their sake; when it is raised, these tests
say at once whether the internals still look the way that code expects. They drive uvicorn's real
protocol over an in-memory transport (no socket, no app of ours).
"""

from __future__ import annotations

import asyncio
import collections
import json
from typing import Any

import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from app.realtime.connection import abort, server_cycle, slim, write_now
from app.server import http_protocol

LIMIT = 4096


class MemoryTransport(asyncio.Transport):
    """What uvicorn's protocol asks of a transport, keeping what is written."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = self.aborted = self.eof = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def connect(app: Any) -> tuple[HttpToolsProtocol, MemoryTransport]:
    config = uvicorn.Config(app, http=http_protocol(LIMIT), log_level="warning")
    config.load()
    protocol = config.http_protocol_class(config=config, server_state=ServerState(), app_state={})  # type: ignore[call-arg]
    assert isinstance(protocol, HttpToolsProtocol)
    transport = MemoryTransport()
    protocol.connection_made(transport)
    return protocol, transport


def test_uvicorn_is_the_pinned_minor_version() -> None:
    assert uvicorn.__version__.startswith("0.55."), (
        f"uvicorn {uvicorn.__version__}: re-check app/server.py and app/realtime/connection.py, then move the pin")


def test_a_request_head_over_the_limit_is_answered_431_and_not_served() -> None:
    served: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        served.append(scope["path"])

    async def scenario() -> None:
        protocol, transport = connect(app)
        protocol.data_received(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1000)
        assert not transport.written  # under the limit so far
        for _ in range(5):
            protocol.data_received(b"a" * 1000)
        await asyncio.sleep(0)
        head, _, body = bytes(transport.written).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431 "), head
        assert b"content-type: application/problem+json" in head and b"connection: close" in head
        assert json.loads(body)["status"] == 431
        assert transport.eof  # the answer, then FIN; the rest of the request is read and dropped
        protocol.data_received(b"a" * 100_000 + b"\r\n\r\n")
        assert served == []

    asyncio.run(scenario())


def test_heads_under_the_limit_are_served_one_after_another_on_a_connection() -> None:
    served: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        served.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> None:
        protocol, transport = connect(app)
        for path in ("/a", "/b", "/c"):  # each head alone is under LIMIT; together they are over it
            protocol.data_received(f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Pad: {'p' * 3000}\r\n\r\n".encode())
            for _ in range(5):
                await asyncio.sleep(0)
        assert served == ["/a", "/b", "/c"]
        assert bytes(transport.written).count(b"HTTP/1.1 200 ") == 3

    asyncio.run(scenario())


def test_the_request_cycle_offers_what_the_hub_uses() -> None:
    """server_cycle, slim, write_now and abort (app/realtime/connection.py) on uvicorn's real cycle."""
    found: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        cycle = server_cycle(receive)
        found["cycle"] = cycle
        assert cycle is not None
        slim(cycle)
        found["waiters"] = [type(cycle.message_event._waiters),  # type: ignore[attr-defined]
                            type(cycle.flow._is_writable_event._waiters)]  # type: ignore[attr-defined]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        found["written"] = write_now(cycle, b"second")
        abort(cycle)
        await send({"type": "http.response.body", "body": b"", "more_body": False})  # no error once aborted

    async def scenario() -> None:
        protocol, transport = connect(app)
        protocol.data_received(b"GET /v1/events/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(5):
            await asyncio.sleep(0)
        cycle = found["cycle"]
        assert isinstance(cycle, RequestResponseCycle) and isinstance(cycle.flow, FlowControl)
        assert found["waiters"] == [list, list]
        assert found["written"] is True and cycle.chunked_encoding is True
        assert bytes(transport.written).endswith(b"5\r\nfirst\r\n6\r\nsecond\r\n")
        assert transport.aborted and cycle.disconnected

    asyncio.run(scenario())


def test_flow_control_keeps_its_event_where_slim_looks() -> None:
    flow = FlowControl(MemoryTransport())
    event = getattr(flow, "_is_writable_event", None)
    assert isinstance(event, asyncio.Event) and type(event._waiters) is collections.deque
