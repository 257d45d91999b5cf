"""The AsyncAPI document covers every event type that app/ publishes, each with a schema.

Event types are found in the source, not in the catalogue: every string literal passed as the type
to `publish`, `publish_ephemeral` or `control_envelope`, and every literal of an event namespace
(types reach `publish` through variables too: the status machine's, the resource change's). A new
event published without a catalogue entry fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from app.api_docs.asyncapi import asyncapi_document
from app.api_docs.catalogue import CATALOGUE
from app.email.rendering import TEMPLATE_KEYS

APP = Path(__file__).resolve().parents[2] / "app"
PUBLISHERS = {"publish", "publish_ephemeral", "control_envelope"}
EVENT_LIKE = re.compile(r"^(booking|resource|notification|reminder|system|message|conversation|presence|stream)"
                        r"\.[a-z_]+$|^announcement$")


def published_types() -> dict[str, str]:
    """Event type -> a file that names it."""
    found: dict[str, str] = {}
    for path in APP.rglob("*.py"):
        if "piccolo_migrations" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in PUBLISHERS and isinstance(node.args[0].value, str):
                    found[node.args[0].value] = str(path)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and EVENT_LIKE.match(node.value):
                if node.value not in TEMPLATE_KEYS:  # e-mail template keys look alike (`reminder.owner`)
                    found[node.value] = str(path)
    return found


def test_every_published_event_type_has_a_message_in_the_document() -> None:
    document = asyncapi_document()
    published = published_types()
    assert {"booking.confirmed", "presence.changed", "stream.reset", "system.alert"} <= set(published)
    missing = {t: where for t, where in published.items() if t not in document["components"]["messages"]}
    assert not missing, f"published without a schema in app/api_docs/catalogue.py: {missing}"


def test_every_message_has_its_data_schema_and_channels() -> None:
    document = asyncapi_document()
    assert document["asyncapi"].startswith("3.")
    assert {"user", "role", "resource", "broadcast"} <= set(document["channels"])
    schemas = document["components"]["schemas"]
    for event_type, kind in CATALOGUE.items():
        payload = document["components"]["messages"][event_type]["payload"]
        assert payload["properties"]["type"] == {"const": event_type}
        data_ref = payload["properties"]["data"]["$ref"]
        assert data_ref.rsplit("/", 1)[1] in schemas, event_type
        for channel in kind.channels:
            assert event_type in document["channels"][channel]["messages"], (event_type, channel)
    assert schemas["BookingRead"]["properties"]["status"]["enum"]  # enums come through from the types
    assert "from_resource_id" in schemas["ReassignedBooking"]["properties"]
    assert schemas["EmailFailedAlert"]["properties"]["kind"] == {"enum": ["email_failed"]}
