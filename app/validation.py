"""Strict request-body validation, and msgspec's messages turned into `{"field", "message"}`.

Litestar converts bodies with `strict=False`, which quietly turns `"2"` into `2`. The
`validate_body` hook runs before Litestar parses `data` and decodes the raw body strictly against
the handler's own `data` annotation, so wrong types, unknown fields, missing fields, invalid UTF-8
and empty bodies are refused with a message naming the field. A body must be sent as JSON
(`application/json` or a `+json` type): anything else is 415. JSON nested deeper than the decoder
allows is 400: past `MAX_JSON_DEPTH` levels, checked before decoding, because msgspec's own limit
is Python's recursion limit, reached at a depth that depends on the caller's stack (a body that
passed here could then fail in Litestar's decode as a `RecursionError`, a 500).

`check_query` holds query strings to the same standard (SPEC: "an unknown parameter, or a known
one with a bad value, is 422 naming it"): every query parameter must be one the handler, or one of
its dependencies, declares (under its alias: `from_` is `from`), and may appear once unless it is a
list. `validate_request`, the app's `before_request` hook, runs both.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any

import msgspec
from litestar import Request
from litestar.routes import HTTPRoute

from app.errors import BadRequest, FieldError, Unprocessable, UnsupportedMediaType, field_error

_BODY_METHODS = {"POST", "PUT", "PATCH"}
MAX_JSON_DEPTH = 64
"""Arrays and objects nested deeper than this in a body are refused (400)."""
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = tuple({ord("["): 1, ord("]"): -1}.get(b, 0) for b in range(256))
AUTHENTICATING_DEPENDENCIES = ("user", "publisher", "principal", "manager")
"""Dependencies that authenticate the caller from the request alone (each caches its answer)."""


# A handler's `opt` flag: the portal's pages, whose query string is read by the page's own script
# (e.g. `/app/bookings?status=pending`), not by the server.
BROWSER_PAGE = "browser_page"


async def validate_request(request: Request[Any, Any, Any]) -> None:
    """`before_request` hook of the app: the query string, then the body."""
    await check_query(request)
    await validate_body(request)


async def _authenticate(request: Request[Any, Any, Any]) -> None:
    dependencies = request.route_handler.resolve_dependencies()
    for name in AUTHENTICATING_DEPENDENCIES:  # 401/403 before 422: a stranger learns nothing of the body
        if name in dependencies:
            await dependencies[name].dependency(request)


async def check_query(request: Request[Any, Any, Any]) -> None:
    """422 for a query parameter the handler does not declare, or one given more than once."""
    if not request.scope["query_string"] or request.route_handler.opt.get(BROWSER_PAGE):
        return
    names, repeatable = _declared_query(request)
    try:
        refuse_unknown_query(request.query_params.multi_items(), names, repeatable)
    except Unprocessable:
        await _authenticate(request)  # 401 outranks 422 here too
        raise


def refuse_unknown_query(
    pairs: Iterable[tuple[str, str]], names: Collection[str], repeatable: Collection[str] = ()
) -> None:
    """422 naming the first parameter in `pairs` that is not in `names`, or repeats without being a list."""
    seen: set[str] = set()
    for name, _ in pairs:
        if name not in names:
            accepted = ", ".join(sorted(names)) or "none"
            error = FieldError(name[:100], f"unknown query parameter (this endpoint takes: {accepted})")
        elif name in seen and name not in repeatable:
            error = FieldError(name, "given more than once; send it once")
        else:
            seen.add(name)
            continue
        raise Unprocessable(f"{error.field}: {error.message}", [error])


def _declared_query(request: Request[Any, Any, Any]) -> tuple[frozenset[str], frozenset[str]]:
    """The query parameters the handler takes (its own and its dependencies'), and those that are lists.

    Read from the kwargs model Litestar itself parses parameters with, built once per route."""
    index: dict[Any, tuple[frozenset[str], frozenset[str]]] | None = request.app.state.get("declared_query")
    if index is None:
        index = {}
        for route in request.app.routes:
            if isinstance(route, HTTPRoute):
                for handler, model in route.route_handler_map.values():
                    params = model.expected_query_params
                    index[handler] = (frozenset(p.field_alias for p in params),
                                      frozenset(p.field_alias for p in params if p.is_sequence))
        request.app.state["declared_query"] = index
    return index.get(request.route_handler, (frozenset(), frozenset()))


async def validate_body(request: Request[Any, Any, Any]) -> None:
    """`before_request` hook: decode the body strictly against the handler's `data` type."""
    if request.method not in _BODY_METHODS:
        return
    parameter = request.route_handler.parsed_fn_signature.parameters.get("data")
    if parameter is None:
        return
    await _authenticate(request)
    body = await request.body()
    if not body.strip():
        if parameter.is_optional:
            return
        raise BadRequest("The request body is empty; send a JSON object.")
    _require_json(request.headers.get("content-type"))
    if _nested_deeper_than(body, MAX_JSON_DEPTH):
        raise _too_deep()
    try:
        msgspec.json.decode(body, type=parameter.annotation, strict=True)
    except msgspec.ValidationError as exc:
        _refuse_malformed(body)  # a syntax error later in the body outranks a field error
        error = field_error(str(exc))
        raise Unprocessable(f"{error.field}: {error.message}", [error]) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}.") from None
    except RecursionError:
        raise _too_deep() from None


def _refuse_malformed(body: bytes) -> None:
    try:
        msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}.") from None
    except RecursionError:  # `[[[[…` 10,000 deep: msgspec stops at Python's recursion limit
        raise _too_deep() from None


def _too_deep() -> BadRequest:
    return BadRequest(f"The request body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep.")


def _nested_deeper_than(body: bytes, limit: int) -> bool:
    """True when arrays and objects nest deeper than `limit`; without a Python loop over the body
    (a hostile 1 MiB of brackets costs well under 0.1 s)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", body).translate(_SQUARE, _NOT_BRACKET)  # strings may hold brackets
    if b"[" * (limit + 1) in brackets:
        return True
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit


def _require_json(content_type: str | None) -> None:
    """415 unless the body is declared JSON: `application/json`, or a `+json` type such as
    `application/merge-patch+json` (parameters such as `charset` are fine)."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    plus_json = media_type.startswith("application/") and media_type.endswith("+json")
    if media_type != "application/json" and not plus_json:
        raise UnsupportedMediaType(
            f"Send the body as JSON with `Content-Type: application/json` (got {media_type or 'no Content-Type'!r}).",
        )


def to_utc(value: datetime, field: str) -> datetime:
    """`value` in UTC; 422 naming `field` when it has no offset or lies outside years 1 to 9999 in UTC."""
    if value.tzinfo is None:
        raise Unprocessable.field(field, "must carry a UTC offset, e.g. 2030-01-01T09:00:00Z")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise Unprocessable.field(field, "is out of range") from None
