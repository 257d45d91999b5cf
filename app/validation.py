"""Strict request-body validation, and msgspec's messages turned into `{"field", "message"}`.

Litestar converts bodies with `strict=False`, which quietly turns `"2"` into `2`. The
`validate_body` hook runs before Litestar parses `data` and decodes the raw body strictly against
the handler's own `data` annotation, so wrong types, unknown fields, missing fields, invalid UTF-8
and empty bodies are refused with a message naming the field.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request

from app.errors import BadRequest, Unprocessable, field_error
from app.security import current_user

_BODY_METHODS = {"POST", "PUT", "PATCH"}


async def validate_body(request: Request[Any, Any, Any]) -> None:
    """`before_request` hook: decode the body strictly against the handler's `data` type."""
    if request.method not in _BODY_METHODS:
        return
    parameter = request.route_handler.parsed_fn_signature.parameters.get("data")
    if parameter is None:
        return
    if "user" in request.route_handler.resolve_dependencies():
        await current_user(request)  # 401 before 422
    body = await request.body()
    if not body.strip():
        if parameter.is_optional:
            return
        raise BadRequest("The request body is empty; send a JSON object.")
    try:
        msgspec.json.decode(body, type=parameter.annotation, strict=True)
    except msgspec.ValidationError as exc:
        _refuse_malformed(body)  # a syntax error later in the body outranks a field error
        error = field_error(str(exc))
        raise Unprocessable(f"{error.field}: {error.message}", [error]) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}.") from None


def _refuse_malformed(body: bytes) -> None:
    try:
        msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}.") from None
