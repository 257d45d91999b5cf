"""A request head (request line and headers) over `MAX_REQUEST_HEADER_BYTES` (32 KiB by default)
is answered 431 with a problem document as soon as the limit is passed, without parsing the rest,
and the API keeps answering everyone else meanwhile. Driven over raw sockets, as an attacker would."""

from __future__ import annotations

import json
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
from conftest import Server

MIB = 1024 * 1024


def raw_connection(server: Server) -> socket.socket:
    parts = urlsplit(server.base_url)
    assert parts.hostname is not None and parts.port is not None
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    return sock


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """(status line and headers, body) of one response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed in the middle of the body"
        body += chunk
    return head, body


def test_a_1_mib_request_header_is_431_at_once_and_health_answers_meanwhile(server: Server) -> None:
    sock = raw_connection(server)
    sent = 0

    def send_big_header() -> None:
        nonlocal sent
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: bookwire\r\nX-Big: ")
            for _ in range(16):  # 1 MiB, 64 KiB at a time, like a client that keeps going
                sock.sendall(b"a" * (64 * 1024))
                sent += 64 * 1024
            sock.sendall(b"\r\n\r\n")
        except OSError:  # the server stopped reading this connection: expected
            pass

    started = time.monotonic()
    sender = threading.Thread(target=send_big_header)
    sender.start()
    try:
        health = httpx.get(f"{server.base_url}/health", timeout=5)
        assert health.status_code == 200
        head, body = read_response(sock)
        elapsed = time.monotonic() - started
    finally:
        sender.join(timeout=10)
        sock.close()
    assert head.startswith(b"HTTP/1.1 431 "), head
    headers = head.lower()
    assert b"content-type: application/problem+json" in headers and b"connection: close" in headers, head
    problem = json.loads(body)
    assert problem["status"] == 431 and problem["title"] and "MAX_REQUEST_HEADER_BYTES" in problem["detail"], problem
    assert problem["type"].endswith("/request-header-too-large"), problem
    assert elapsed < 2, f"the 431 took {elapsed:.1f} s"
    assert httpx.get(f"{server.base_url}/health", timeout=5).status_code == 200


def test_large_headers_under_the_limit_are_served_on_a_kept_alive_connection(server: Server) -> None:
    sock = raw_connection(server)
    try:
        for _ in range(3):  # 20 KB each: under the limit alone, over it together
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: bookwire\r\nCookie: c=" + b"x" * 20_000 + b"\r\n\r\n")
            head, body = read_response(sock)
            assert head.startswith(b"HTTP/1.1 200 "), head
            assert json.loads(body) == {"status": "ok"}
    finally:
        sock.close()
