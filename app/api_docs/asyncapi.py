"""The AsyncAPI 3 document of the event catalogue (`/schema/asyncapi.json`), built from
`catalogue.CATALOGUE`: schemas come from the msgspec payload types themselves
(`msgspec.json.schema_components`), so the document cannot drift from what is published."""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

from app.api_docs.catalogue import CATALOGUE, EventKind
from app.realtime.events import Envelope

REF = "#/components/schemas/{name}"
CHANNELS: dict[str, dict[str, Any]] = {
    "user": {"address": "user:{userId}", "title": "A user's channel",
             "description": "Always read by that user's connections; admins may request anyone's (`topics`).",
             "parameters": {"userId": {"description": "The user's id (a UUID)."}}},
    "role": {"address": "role:{role}", "title": "A role's channel",
             "description": "Always read by every user of that role; admins may request any role's.",
             "parameters": {"role": {"enum": ["customer", "provider", "admin"]}}},
    "resource": {"address": "resource:{resourceId}", "title": "A resource's followers",
                 "description": "Read on request (`topics=resource:<id>`) for any active resource.",
                 "parameters": {"resourceId": {"description": "The resource's id (a UUID)."}}},
    "broadcast": {"address": "broadcast", "title": "Everyone", "description": "Read by every signed-in user."},
    "control": {"address": None, "title": "The connection itself",
                "description": "Control events of one stream or long-poll; their envelope's `channel` is null."},
}
INFO_DESCRIPTION = """Every change in Bookwire is published as an event, delivered in one envelope
`{"id", "type", "channel", "occurred_at", "data"}` over Server-Sent Events (`GET /v1/events/stream`)
and long-poll (`GET /v1/events/poll`), both described in `/schema/openapi.json`. One publish is one
event with one id; `channel` is the first of its channels that the connection reads. Ephemeral
events (`conversation.typing`, `presence.changed`) and `stream.closing` have `"id": null` and move no
cursor. Integrators' custom events (`POST /v1/events`) have types of their own and any object as
`data`."""


def _payload(event_type: str, kind: EventKind, envelope: dict[str, Any], data_ref: dict[str, Any]) -> dict[str, Any]:
    """The envelope's schema with `type` fixed to `event_type` and `data` of the event's type."""
    properties = dict(envelope["properties"])
    properties["type"] = {"const": event_type}
    properties["data"] = data_ref
    if kind.ephemeral:
        properties["id"] = {"type": "null"}
    if not kind.channels:
        properties["channel"] = {"type": "null"}
    return {**envelope, "title": event_type, "properties": properties}


@cache
def asyncapi_document() -> dict[str, Any]:
    """The whole document (built once per process: it depends only on the code)."""
    types = list(dict.fromkeys([Envelope, *(kind.data for kind in CATALOGUE.values())]))
    refs, schemas = msgspec.json.schema_components(types, ref_template=REF)
    envelope = schemas.pop("Envelope")
    envelope["properties"]["data"] = {"type": "object", "description": "The event's data: see each message."}
    envelope["properties"]["occurred_at"] = {"type": "string", "format": "date-time"}
    schemas["Envelope"] = envelope
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {name: {**spec, "messages": {}} for name, spec in CHANNELS.items()}
    for event_type, kind in CATALOGUE.items():
        messages[event_type] = {
            "name": event_type, "title": event_type, "summary": kind.summary, "contentType": "application/json",
            "payload": _payload(event_type, kind, envelope, refs[types.index(kind.data)]),
        }
        for channel in kind.channels or ("control",):
            channels[channel]["messages"][event_type] = {"$ref": f"#/components/messages/{event_type}"}
    messages["custom"] = {
        "name": "custom", "title": "An integrator's event", "contentType": "application/json",
        "summary": "Published with POST /v1/events: any `type` outside the reserved prefixes, any object as `data`.",
        "payload": {"$ref": REF.format(name="Envelope")},
    }
    for channel in ("user", "role", "resource", "broadcast"):
        channels[channel]["messages"]["custom"] = {"$ref": "#/components/messages/custom"}
    operations = {
        f"receive_{name}": {
            "action": "receive", "channel": {"$ref": f"#/channels/{name}"},
            "summary": f"Receive the events of {spec['title'].lower()} (SSE or long-poll).",
            "messages": [{"$ref": f"#/channels/{name}/messages/{m}"} for m in channels[name]["messages"]],
        }
        for name, spec in CHANNELS.items()
    }
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "Bookwire events", "version": "1", "description": INFO_DESCRIPTION},
        "defaultContentType": "application/json",
        "servers": {
            "sse": {"host": "localhost:8000", "protocol": "http", "pathname": "/v1/events/stream",
                    "description": "Server-Sent Events: `event: <type>`, `data: <envelope>` (the API's own host)."},
            "poll": {"host": "localhost:8000", "protocol": "http", "pathname": "/v1/events/poll",
                     "description": "Long-poll: `{\"events\": [<envelope>...], \"cursor\"}`."},
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }
