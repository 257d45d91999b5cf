"""Observability (issue 11, item 2): request ids, access log lines without secrets, JSON lines with
the user's id, and /metrics (this process) beside /metrics/cluster (the deployment, exported once)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
from conftest import Cast, Server, running_api


def _log_lines(data_dir: Path) -> list[dict[str, object]]:
    """The JSON lines of the API's log. The last line may be half written at the moment it is read
    (the API writes while the test reads): a line that does not parse is left out."""
    lines = []
    for text in (data_dir / "api.log").read_text().splitlines():
        if text.startswith("{"):
            try:
                lines.append(json.loads(text))
            except json.JSONDecodeError:
                continue
    return lines


def _lines_of(server: Server, request_id: str, timeout: float = 5.0) -> list[dict[str, object]]:
    """The API's log lines of one request (the access line is written when the response ends)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in _log_lines(server.data_dir) if line.get("request_id") == request_id]
        if any(line["logger"] == "bookwire.access" for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_a_request_id_is_taken_or_made_and_returned(server: Server) -> None:
    with server.client() as client:
        assert client.get("/health", headers={"X-Request-ID": "edge-1234.abc:9_Z"}).headers["x-request-id"] \
            == "edge-1234.abc:9_Z"
        for insane in (b"x" * 65, b"a b", b"<script>", "ü".encode()):
            made = client.get("/health", headers={b"X-Request-ID": insane}).headers["x-request-id"]
            assert re.fullmatch(r"[0-9a-f]{32}", made), made
        assert client.get("/nowhere").headers["x-request-id"]  # errors carry one too


def test_every_line_of_a_request_carries_its_id_and_user(server: Server, cast: Cast) -> None:
    answer = cast.customer.http.get("/v1/me", headers={"X-Request-ID": "who-am-i-1"})
    assert answer.status_code == 200
    (line,) = _lines_of(server, "who-am-i-1")
    assert line["logger"] == "bookwire.access" and line["level"] == "info"
    assert line["user_id"] == cast.customer.id and line["status"] == 200 and line["path"] == "/v1/me"
    assert line["method"] == "GET" and isinstance(line["duration_ms"], float) and line["time"]


def test_the_access_log_masks_tokens_in_query_strings(server: Server, cast: Cast) -> None:
    stream_token = cast.customer.http.post("/v1/auth/stream-token").json()["token"]
    with httpx.Client(base_url=server.base_url, timeout=10) as client, \
            client.stream("GET", f"/v1/events/stream?access_token={stream_token}&last_event_id=0-0",
                          headers={"X-Request-ID": "stream-token-1"}) as stream:
        assert stream.status_code == 200
    lines = _lines_of(server, "stream-token-1")
    access = [line for line in lines if line["logger"] == "bookwire.access"]
    assert len(access) == 1 and access[0]["path"] == "/v1/events/stream", lines
    assert access[0]["query"] == "access_token=***&last_event_id=0-0"
    assert stream_token not in (server.data_dir / "api.log").read_text()
    assert stream_token.split(".")[2] not in (server.data_dir / "api.log").read_text()


def test_metrics_have_the_right_types_routes_and_process_figures(server: Server, cast: Cast) -> None:
    cast.customer.http.get("/v1/bookings", params={"limit": 1})
    cast.customer.http.get(f"/v1/resources/{cast.customer.id}")  # a 404 on a templated route
    cast.customer.http.get("/no/such/page")
    text = cast.customer.http.get("/metrics").text
    assert "# TYPE bookwire_http_requests_total counter" in text
    assert "# TYPE bookwire_http_request_duration_seconds histogram" in text
    assert 'bookwire_http_request_duration_seconds_count{method="GET",route="/v1/bookings",status="2xx"}' in text
    assert 'route="/v1/resources/{resource_id}"' in text
    assert 'route="unmatched"' in text and "/no/such/page" not in text
    assert cast.customer.id not in text  # no raw paths as labels
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
        assert re.search(rf"^{name} \S+$", text, re.MULTILINE), name
    assert "bookwire_cluster_" not in text and "bookwire_queue_depth" not in text  # cluster-wide: not per process
    cluster = cast.customer.http.get("/metrics/cluster").text
    for family in ('bookwire_cluster_queue_depth{queue="email"}', 'bookwire_cluster_worker_events_total{kind=',
                   "bookwire_cluster_workers ", "bookwire_cluster_outbox_backlog "):
        assert family in cluster, family
    assert "process_" not in cluster and "bookwire_http_" not in cluster


def test_log_settings_are_read_and_text_is_for_people(tmp_path: Path, redis_url: str) -> None:
    with running_api(tmp_path, redis_url, LOG_FORMAT="text", LOG_LEVEL="warning") as (url, _):
        httpx.get(f"{url}/health", headers={"X-Request-ID": "quiet-1"})
    text = (tmp_path / "api.log").read_text()
    assert "quiet-1" not in text  # the access log is INFO
    assert not any(line.startswith("{") for line in text.splitlines())
