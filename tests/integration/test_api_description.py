"""The API description as served: the OpenAPI document says what the API really does (security,
problem documents, enums, the event stream, stable operation ids), and the AsyncAPI document is served."""

from __future__ import annotations

from typing import Any

import httpx
from conftest import Server, at

STABLE_OPERATION_IDS = {
    "health", "ready", "register", "issueToken", "issueStreamToken", "getMe", "listUsers", "getUser", "updateUser",
    "listResources", "createResource", "getResource", "updateResource", "deleteResource", "getAvailability",
    "listBookings", "createBooking", "getBooking", "updateBooking", "getBookingHistory", "getBookingReminders",
    "confirmBooking", "rejectBooking", "cancelBooking", "checkInBooking", "completeBooking", "listNotifications",
    "readNotification", "readAllNotifications", "countUnreadNotifications", "pollEvents", "publishEvent",
    "streamEvents", "announce", "presence", "stats", "listEmailTemplates", "getEmailTemplate", "putEmailTemplate",
    "resetEmailTemplate", "previewEmailTemplate", "listEmails", "listMessages", "postMessage", "postMessageReceipts",
    "postTyping", "listConversations", "countUnreadMessages", "listPools", "createPool", "getPool", "updatePool",
    "deletePool", "getPoolAvailability",
}
"""Generated clients name their functions after these: renaming one breaks every client."""
PUBLIC = {"health", "ready", "register", "issueToken"}


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, item in document["paths"].items() for method, op in item.items()
            if isinstance(op, dict) and "operationId" in op]


def test_openapi_document_describes_security_problems_enums_and_the_stream(server: Server) -> None:
    document = httpx.get(f"{server.base_url}/schema/openapi.json").json()
    ops = {op["operationId"]: (method, path, op) for method, path, op in operations(document)}
    assert set(ops) >= STABLE_OPERATION_IDS
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        **document["components"]["securitySchemes"]["bearerAuth"], "type": "http", "scheme": "bearer",
        "bearerFormat": "JWT"}
    for operation_id, (_, path, op) in ops.items():
        assert bool(op.get("security")) == (operation_id not in PUBLIC), operation_id
        responses = op["responses"]
        assert "422" in responses, operation_id
        for status, response in responses.items():
            if int(status) >= 400:
                schema = response["content"]["application/problem+json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Problem"}, (operation_id, status)
        if "{" in path:
            assert "404" in responses, operation_id
        assert op.get("summary") and op.get("description"), operation_id
    assert "status_code" not in str(document)  # Litestar's default error body is gone
    for operation_id in ("confirmBooking", "checkInBooking", "completeBooking", "createBooking", "register"):
        assert "409" in ops[operation_id][2]["responses"], operation_id
    for operation_id in ("register", "issueToken", "issueStreamToken", "streamEvents"):
        assert "429" in ops[operation_id][2]["responses"], operation_id
    problem = document["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail"} <= set(problem["required"])
    assert document["components"]["schemas"]["FieldError"]["required"] == ["field", "message"]
    schemas = document["components"]["schemas"]
    assert "checked_in" in schemas["BookingRead"]["properties"]["status"]["enum"]
    assert set(schemas["UserRead"]["properties"]["role"]["enum"]) == {"customer", "provider", "admin"}
    assert set(schemas["ReminderRead"]["properties"]["status"]["enum"]) == {"scheduled", "sent", "cancelled", "failed"}
    assert schemas["AnnouncementCreate"]["properties"]["audience"]["enum"]
    stream = document["paths"]["/v1/events/stream"]["get"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    assert {(p["name"], p["in"]) for p in stream["parameters"]} == {
        ("access_token", "query"), ("last_event_id", "query"), ("topics", "query"), ("Last-Event-ID", "header")}
    assert {"401", "403", "429"} <= set(stream["responses"])


def test_every_operation_marked_secured_answers_401_without_a_token(server: Server) -> None:
    """The document's security is the truth: a request without a token is refused (its required query
    parameters are given: a missing one is a 422 before the token is looked at)."""
    document = httpx.get(f"{server.base_url}/schema/openapi.json").json()
    wrong = []
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        for method, path, op in operations(document):
            if not op.get("security"):
                continue
            url = path.replace("{key}", "booking.created.customer")
            url = "/".join("00000000-0000-4000-8000-000000000000" if p.startswith("{") else p for p in url.split("/"))
            required = {p["name"]: at(24) for p in op.get("parameters", []) if p["in"] == "query" and p.get("required")}
            answer = client.request(method.upper(), url, params=required, json={} if "requestBody" in op else None)
            if answer.status_code != 401 or not answer.headers["content-type"].startswith("application/problem+json"):
                wrong.append(f"{method.upper()} {url}: {answer.status_code}")
    assert not wrong, wrong


def test_asyncapi_document_is_served(server: Server) -> None:
    answer = httpx.get(f"{server.base_url}/schema/asyncapi.json")
    assert answer.status_code == 200
    document = answer.json()
    assert document["asyncapi"] == "3.0.0"
    assert {"booking.confirmed", "booking.reassigned", "presence.changed", "stream.closing"} <= set(
        document["components"]["messages"])
