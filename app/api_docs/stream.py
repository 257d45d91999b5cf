"""`GET /v1/events/stream` as an OpenAPI path item. The stream is served beside Litestar's router
(`app/realtime/stream.py`), so Litestar cannot see it; this describes it by hand, next to the
problem rules it shares with every other operation."""

from __future__ import annotations

from typing import Any

from app.realtime.stream import STREAM_PATH

OPERATION_ID = "streamEvents"
DESCRIPTION = """Follow your channels as Server-Sent Events. The stream starts with `retry:`, then sends
each event as `id: <event id>`, `event: <type>`, `data: <envelope JSON>` (see `/schema/asyncapi.json`
for every type and its data), and a `: ping` comment as heartbeat every `SSE_HEARTBEAT_SECONDS`.
Resume after a disconnect with the last id received (`Last-Event-ID` or `last_event_id`): missed events
are replayed in order, then live ones follow. An unknown or expired id is answered with a
`stream.reset` event, never an error. The server ends a stream with `stream.closing` (`data.reason`:
`token_expired`, `deactivated`, `shutdown`, `max_age`). Browsers, whose EventSource cannot send
headers, pass a short-lived stream token (`POST /v1/auth/stream-token`) as `access_token`."""
FRAMES_EXAMPLE = """retry: 3000

id: 1767225600000-0
event: booking.confirmed
data: {"id":"1767225600000-0","type":"booking.confirmed","channel":"role:admin","occurred_at":"…","data":{…}}

: ping

"""


def stream_path_item() -> tuple[str, dict[str, Any]]:
    """The path and its item (the operation's problem responses are added with everyone else's)."""
    return STREAM_PATH, {"get": {
        "tags": ["events"],
        "summary": "Follow your channels as Server-Sent Events",
        "description": DESCRIPTION,
        "operationId": OPERATION_ID,
        "parameters": [
            {"name": "access_token", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "A stream token (or an access token), for clients that cannot send `Authorization`."},
            {"name": "last_event_id", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "Resume after this event id (as `Last-Event-ID`)."},
            {"name": "topics", "in": "query", "required": False, "schema": {"type": "string", "maxLength": 5000},
             "description": "Extra channels, comma-separated: `resource:<id>`; admins also `user:<id>`, "
                            "`role:<role>`. Anything else is 403."},
            {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"},
             "description": "The id of the last event received, sent by EventSource when it reconnects."},
        ],
        "responses": {"200": {
            "description": "The event stream (it stays open until the client leaves or `stream.closing`).",
            "headers": {"Cache-Control": {"schema": {"type": "string", "enum": ["no-cache"]}},
                        "X-Accel-Buffering": {"schema": {"type": "string", "enum": ["no"]}}},
            "content": {"text/event-stream": {"schema": {"type": "string"}, "example": FRAMES_EXAMPLE}},
        }},
    }}
