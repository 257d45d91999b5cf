"""The OpenAPI document completed with what Litestar does not infer from the handlers: the bearer
security scheme on every operation that needs a token, the problem documents each operation really
answers (instead of Litestar's default 400 body, which the API never sends), summaries from the
handlers' docstrings, readable names for the page schemas, and `GET /v1/events/stream`.

It works on the generated JSON (a copy), once per process, when the document is first served."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from litestar import Litestar
from litestar.routes import HTTPRoute

from app.api_docs.problems import problem_response, problem_schemas, problem_statuses
from app.api_docs.stream import OPERATION_ID as STREAM_OPERATION
from app.api_docs.stream import stream_path_item
from app.validation import AUTHENTICATING_DEPENDENCIES

EVENT_ENDPOINTS = {"pollEvents", STREAM_OPERATION}
"""They also take a stream token in `?access_token=` (EventSource cannot send headers)."""
SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
        "description": "An access token from `POST /v1/auth/register` or `POST /v1/auth/token` (or an "
                       "identity provider's JWT with the same claims), or a service token for `POST /v1/events`.",
    },
    "streamToken": {
        "type": "apiKey", "in": "query", "name": "access_token",
        "description": "A 60-second stream token from `POST /v1/auth/stream-token`, valid only for the event "
                       "endpoints.",
    },
}
API_DESCRIPTION = """Bookwire's JSON API. Errors are RFC 9457 problem documents (`application/problem+json`,
schema `Problem`). Lists are paginated (`limit`, `cursor` → `{"items", "next_cursor"}`). Timestamps are
RFC 3339 with an offset. Events: `GET /v1/events/stream` (SSE) and `GET /v1/events/poll`; their types and
data are described by the AsyncAPI document at `/schema/asyncapi.json`."""
_SENTENCE_END = re.compile(r"(?<=\.)\s")


def _handlers_by_operation(app: Litestar) -> dict[str, Any]:
    handlers = {}
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            for handler in route.route_handlers:
                if isinstance(handler.operation_id, str):
                    handlers[handler.operation_id] = handler
    return handlers


def _secured(handler: Any) -> bool:
    """Whether the handler checks a token: it has one of the dependencies that authenticate."""
    return any(name in handler.resolve_dependencies() for name in AUTHENTICATING_DEPENDENCIES)


def _summary(operation: dict[str, Any]) -> None:
    """The first sentence of the handler's docstring is the summary (the whole of it stays the description)."""
    description = " ".join((operation.get("description") or "").split("\n\n")[0].split())
    if description:
        operation["summary"] = _SENTENCE_END.split(description, maxsplit=1)[0].rstrip(".")


def _complete_operation(operation: dict[str, Any], path: str, secured: bool) -> None:
    operation_id = operation["operationId"]
    parameters = operation.get("parameters", [])
    if secured:
        operation["security"] = [{"bearerAuth": []}] + ([{"streamToken": []}] if operation_id in EVENT_ENDPOINTS
                                                         else [])
    statuses = problem_statuses(
        operation_id, secured=secured, has_path_params="{" in path, has_body="requestBody" in operation,
        has_cursor=any(p["name"] == "cursor" for p in parameters),
        idempotent_create=any(p["name"] == "Idempotency-Key" for p in parameters))
    responses = {code: r for code, r in operation["responses"].items() if int(code) < 400}  # Litestar's 400 goes
    responses.update({str(status): problem_response(status, why) for status, why in statuses.items()})
    operation["responses"] = responses


def complete_openapi(generated: dict[str, Any], app: Litestar) -> dict[str, Any]:
    """A completed copy of the document Litestar generated for `app`."""
    document = copy.deepcopy(generated)
    handlers = _handlers_by_operation(app)
    path, item = stream_path_item()
    document["paths"][path] = item
    for path, path_item in document["paths"].items():
        for operation in path_item.values():
            if not isinstance(operation, dict) or "operationId" not in operation:
                continue
            if operation["operationId"] == STREAM_OPERATION:  # served beside the router: described by hand
                _complete_operation(operation, path, secured=True)
                continue
            _summary(operation)
            _complete_operation(operation, path, secured=_secured(handlers[operation["operationId"]]))
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(problem_schemas())
    components["securitySchemes"] = SECURITY_SCHEMES
    document["info"]["description"] = API_DESCRIPTION
    return _readable_names(document)


def _readable_names(document: dict[str, Any]) -> dict[str, Any]:
    """`Page_app.bookings.schemas.BookingRead_` becomes `BookingReadPage` (named after its items' schema),
    and every schema's `title` is its name: generators name their classes by title, and two types of one
    name in two areas (Litestar names them `email_schemas_DeliveryRead`…) must not become one class."""
    schemas = document["components"]["schemas"]
    renames = {}
    for name, schema in schemas.items():
        items = schema.get("properties", {}).get("items", {}).get("items", {}).get("$ref", "")
        if name.startswith("Page_") and items:
            renames[name] = items.rsplit("/", 1)[1] + "Page"
    text = json.dumps(document)
    for old, new in renames.items():
        text = text.replace(f'"#/components/schemas/{old}"', f'"#/components/schemas/{new}"')
    document = json.loads(text)
    document["components"]["schemas"] = {renames.get(k, k): {**v, "title": renames.get(k, k)}
                                         for k, v in document["components"]["schemas"].items()}
    return document
