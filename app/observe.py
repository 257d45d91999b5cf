"""The outermost ASGI layer: a request id for every HTTP request, its access log line, and its
count and latency in /metrics.

It wraps everything the server runs (Litestar and the event stream beside it), so the stream's
requests are logged and measured like the rest. Cheap on purpose — the access log once cost ~20 %
of an SSE connect: one line per request when it ends (never per frame), the query string only with
its secrets masked, and a latency taken when the response's headers go out (for a stream, the
time to open it, not its lifetime).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.logs import RequestContext, current_request, redact_query, request_id_from
from app.metrics import Metrics

REQUEST_ID_HEADER = b"x-request-id"
UNMATCHED_ROUTE = "unmatched"
"""The route label of a request no route took (404s): raw paths would make a label per URL."""

access_log = logging.getLogger("bookwire.access")


def observe(app: ASGIApp, metrics: Metrics) -> ASGIApp:
    """`app` with request ids, an access log and HTTP metrics."""

    async def observed(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        request_id = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                request_id = request_id_from(value)
                break
        context = RequestContext(request_id or uuid.uuid4().hex)
        token = current_request.set(context)
        method, path = scope["method"], scope["path"]  # type: ignore[typeddict-item]  # (a mount rewrites "path")
        started = time.perf_counter()
        status = 0

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()),  # type: ignore[typeddict-item]
                                                  (REQUEST_ID_HEADER, context.request_id.encode())]}
                route = scope.get("path_template") or UNMATCHED_ROUTE  # set by Litestar's router
                metrics.observe_request(route, method, status, time.perf_counter() - started)
            await send(message)

        try:
            await app(scope, receive, observed_send)
        finally:
            if access_log.isEnabledFor(logging.INFO):
                _log_access(scope, method, path, status, time.perf_counter() - started)
            current_request.reset(token)

    return observed


def _log_access(scope: Scope, method: str, path: str, status: int, seconds: float) -> None:
    """One line: method, path, status, milliseconds; the query with its secrets masked; the client."""
    fields: dict[str, Any] = {"method": method, "path": path, "status": status,
                              "duration_ms": round(seconds * 1000, 2)}
    query = scope.get("query_string")
    if query:
        fields["query"] = redact_query(query)
    client = scope.get("client")
    if client:
        fields["client"] = client[0]
    # status 0: the client left (or the app failed) before any response was sent.
    access_log.info("%s %s %d %.1f ms", method, path, status, seconds * 1000, extra=fields)
