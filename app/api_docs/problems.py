"""Which problem documents (RFC 9457, `app/errors.py`) each operation can answer, and their schema.

The rules follow from how the API works, not from a list per operation: every route checks its
query parameters (422) and may meet a database or Redis outage (503); a token-protected route
answers 401 without a valid token and 403 to a token that may not call it (a service token, a
customer on an admin route); a path parameter names something that may not exist or be visible
(404); a body may be malformed (400), too large (413), not JSON (415) or invalid (422); a cursor
may be unreadable (400). Only conflicts (409) and rate limits (429) are named per operation."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from app.bookings.status import Status
from app.errors import FieldError

CONFLICTS = {
    "register": "An account with this e-mail already exists.",
    "createBooking": "No seats left for the interval (or no resource of the pool has room); or the same "
                     "Idempotency-Key is still being answered.",
    "updateBooking": "Not allowed in the booking's status (the problem names `current_status` and "
                     "`allowed_actions`), no seats left for the new times, or the booking changed meanwhile.",
    "confirmBooking": "Not allowed in the booking's status (`current_status`, `allowed_actions`).",
    "rejectBooking": "Not allowed in the booking's status (`current_status`, `allowed_actions`).",
    "cancelBooking": "Not allowed in the booking's status (`current_status`, `allowed_actions`).",
    "checkInBooking": "Not allowed in the booking's status (`current_status`, `allowed_actions`).",
    "completeBooking": "Not allowed in the booking's status (`current_status`, `allowed_actions`).",
    "updateResource": "Future bookings hold more seats than the new capacity.",
    "deleteResource": "The resource has active future bookings.",
    "deletePool": "Resources are still in the pool.",
}
"""409s other than an Idempotency-Key still in progress (every operation that takes the header)."""
RATE_LIMITED = {
    "register": "Too many requests to /v1/auth/ from this address (`AUTH_RATE_LIMIT`).",
    "issueToken": "Too many requests to /v1/auth/ from this address, or 10 failed sign-ins for this e-mail "
                  "within a minute.",
    "issueStreamToken": "Too many requests to /v1/auth/ from this address (`AUTH_RATE_LIMIT`).",
    "pollEvents": "The user holds `MAX_STREAMS_PER_USER` event connections on this process already.",
    "streamEvents": "The user holds `MAX_STREAMS_PER_USER` event connections on this process already.",
}
NO_OUTAGE = {"health"}
"""Operations that never answer 503 (`/health` only says the process is alive)."""


class Problem(msgspec.Struct):
    """An error, as RFC 9457 problem details (`application/problem+json`)."""

    type: Annotated[str, msgspec.Meta(description="A URI naming the kind of problem.",
                                      examples=["https://bookwire.dev/problems/validation"])]
    title: Annotated[str, msgspec.Meta(description="A short summary of the kind of problem.")]
    status: Annotated[int, msgspec.Meta(description="The HTTP status code.")]
    detail: Annotated[str, msgspec.Meta(description="What went wrong this time, for people.")]
    errors: Annotated[list[FieldError] | msgspec.UnsetType, msgspec.Meta(
        description="422 only: each offending field or query parameter (at least the first one found).",
    )] = msgspec.UNSET
    current_status: Annotated[Status | msgspec.UnsetType, msgspec.Meta(
        description="409 on a booking action: the booking's status now.")] = msgspec.UNSET
    allowed_actions: Annotated[list[str] | msgspec.UnsetType, msgspec.Meta(
        description="409 on a booking action: the actions this caller could take now.")] = msgspec.UNSET
    seats_left: Annotated[int | msgspec.UnsetType, msgspec.Meta(
        description="409 for want of seats: how many are free in the interval.")] = msgspec.UNSET


DESCRIPTIONS = {
    400: "The request could not be read: malformed JSON or invalid UTF-8, or an unreadable `cursor`.",
    401: "No valid token: missing, malformed, expired, revoked, or a stream token outside the event endpoints.",
    403: "The token is valid but may not do this (a role's or a service token's limits).",
    404: "No such object, or one the caller may not see.",
    409: "A conflict with the current state.",
    413: "The body is over 1 MiB.",
    415: "The body is not sent as JSON (`application/json` or a `+json` type).",
    422: "Invalid input: `errors` names each offending field or query parameter.",
    429: "A limit was reached; `Retry-After` says when to try again.",
    503: "A dependency (database, Redis) is down, or tokens cannot be minted here; `Retry-After` when known.",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again.",
                               "schema": {"type": "integer", "minimum": 1}}}
EXAMPLES: dict[int, dict[str, Any]] = {
    401: {"type": "https://bookwire.dev/problems/unauthorized", "title": "Not authenticated", "status": 401,
          "detail": "A bearer token is required."},
    404: {"type": "https://bookwire.dev/problems/not-found", "title": "Not found", "status": 404,
          "detail": "Booking not found."},
    409: {"type": "https://bookwire.dev/problems/conflict", "title": "Conflict", "status": 409,
          "detail": "Cannot check in a booking that is pending.", "current_status": "pending",
          "allowed_actions": ["confirm", "reject", "cancel", "reschedule", "update"]},
    422: {"type": "https://bookwire.dev/problems/validation", "title": "Validation failed", "status": 422,
          "detail": "seats: Expected `int` >= 1", "errors": [{"field": "seats", "message": "Expected `int` >= 1"}]},
}


def problem_statuses(operation_id: str, secured: bool, has_path_params: bool, has_body: bool, has_cursor: bool,
                     idempotent_create: bool) -> dict[int, str]:
    """The problem statuses `operation_id` can answer, each with why."""
    found: dict[int, str] = {}
    if has_body or has_cursor:
        found[400] = DESCRIPTIONS[400]
    if secured:
        found[401] = DESCRIPTIONS[401]
        found[403] = DESCRIPTIONS[403]
    if has_path_params:
        found[404] = DESCRIPTIONS[404]
    if operation_id in CONFLICTS or idempotent_create:
        found[409] = CONFLICTS.get(operation_id, "The same Idempotency-Key is still being answered.")
    if has_body:
        found[413] = DESCRIPTIONS[413]
        found[415] = DESCRIPTIONS[415]
    found[422] = DESCRIPTIONS[422]
    if operation_id in RATE_LIMITED:
        found[429] = RATE_LIMITED[operation_id]
    if operation_id not in NO_OUTAGE:
        found[503] = DESCRIPTIONS[503]
    return found


def problem_response(status: int, description: str) -> dict[str, Any]:
    """The OpenAPI response object of a problem document."""
    media: dict[str, Any] = {"schema": {"$ref": "#/components/schemas/Problem"}}
    if status in EXAMPLES:
        media["example"] = EXAMPLES[status]
    response: dict[str, Any] = {"description": description, "content": {"application/problem+json": media}}
    if status in (429, 503):
        response["headers"] = RETRY_AFTER
    return response


def problem_schemas() -> dict[str, Any]:
    """`Problem` and `FieldError` as OpenAPI component schemas."""
    _, schemas = msgspec.json.schema_components([Problem], ref_template="#/components/schemas/{name}")
    return schemas
