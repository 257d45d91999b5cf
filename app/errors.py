"""Errors as RFC 9457 problem details.

Services raise `AppError` subclasses; the handlers here turn them, and Litestar's own HTTP
exceptions, into `application/problem+json` answers. The tree:

    AppError (500)
    ├── BadRequest (400)        malformed JSON, unreadable cursor
    ├── Unauthorized (401)      missing, forged, expired token; deactivated account
    ├── PermissionDenied (403)  the caller sees the object but may not act on it
    ├── NotFound (404)          absent, or not visible to the caller
    ├── Conflict (409)          state or capacity conflict, duplicate, request in progress
    ├── PayloadTooLarge (413)
    ├── UnsupportedMediaType (415)  a body that is not sent as JSON
    ├── Unprocessable (422)     well-formed but invalid input; carries `errors`
    ├── TooManyRequests (429)   a rate or connection limit; carries `Retry-After`
    └── ServiceUnavailable (503) a dependency (database, Redis) is down; carries `Retry-After`
"""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.db.errors import is_database_outage
from app.wire import PATTERN_HINTS

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://bookwire.dev/problems/"


class FieldError(msgspec.Struct):
    """One invalid field: `field` is a dotted path into the input (`seats`, `items.0.name`)."""

    field: str
    message: str


class AppError(Exception):
    """Base of every error a service raises; the status travels with the class."""

    status_code: ClassVar[int] = HTTP_500_INTERNAL_SERVER_ERROR
    title: ClassVar[str] = "Internal server error"
    slug: ClassVar[str] = "internal"

    def __init__(self, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        self.extra = extra


class BadRequest(AppError):
    status_code = 400
    title = "Bad request"
    slug = "bad-request"


class Unauthorized(AppError):
    status_code = 401
    title = "Not authenticated"
    slug = "unauthorized"


class PermissionDenied(AppError):
    status_code = 403
    title = "Forbidden"
    slug = "forbidden"


class NotFound(AppError):
    status_code = 404
    title = "Not found"
    slug = "not-found"


class Conflict(AppError):
    status_code = 409
    title = "Conflict"
    slug = "conflict"


class PayloadTooLarge(AppError):
    status_code = 413
    title = "Payload too large"
    slug = "payload-too-large"


class UnsupportedMediaType(AppError):
    """A request body whose `Content-Type` is not JSON (`application/json` or a `+json` type)."""

    status_code = 415
    title = "Unsupported media type"
    slug = "unsupported-media-type"


class Unprocessable(AppError):
    """Invalid input; `errors` names each offending field."""

    status_code = 422
    title = "Validation failed"
    slug = "validation"

    def __init__(self, detail: str, errors: list[FieldError] | None = None, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.extra["errors"] = errors or []

    @classmethod
    def field(cls, field: str, message: str) -> Unprocessable:
        """The common case: one field is wrong."""
        return cls(f"{field}: {message}", [FieldError(field, message)])


class TooManyRequests(AppError):
    """A limit was reached; the client may try again after `retry_after` seconds."""

    status_code = 429
    title = "Too many requests"
    slug = "too-many-requests"

    def __init__(self, detail: str, retry_after: int, **extra: Any) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(int(retry_after), 1))}, **extra)


class ServiceUnavailable(AppError):
    """A dependency is down (or a feature is not configured); `retry_after` when it may come back."""

    status_code = 503
    title = "Service unavailable"
    slug = "unavailable"

    def __init__(self, detail: str, retry_after: int | None = None, **extra: Any) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        super().__init__(detail, headers=headers, **extra)


def problem_response(
    status: int, title: str, detail: str, slug: str, extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    """An RFC 9457 document as a response."""
    body: dict[str, Any] = {"type": PROBLEM_TYPE_BASE + slug, "title": title, "status": status, "detail": detail}
    if extra:
        body.update(extra)
    return Response(
        msgspec.json.encode(body), status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers
    )


def app_error_handler(_: Request, exc: AppError) -> Response[bytes]:
    return problem_response(exc.status_code, exc.title, exc.detail, exc.slug, exc.extra, exc.headers)


_AT_PATH = re.compile(r" - at `\$\.?([^`]*)`$")
_NAMED_FIELD = re.compile(r"(?:unknown|missing required) field `([^`]+)`")
_REGEX = re.compile(r"Expected `str` matching regex ('.*')")


_HINTS_BY_QUOTED_PATTERN = {repr(pattern): hint for pattern, hint in PATTERN_HINTS.items()}  # as msgspec quotes it


def _pattern_hint(match: re.Match[str]) -> str:
    return _HINTS_BY_QUOTED_PATTERN.get(match.group(1), "must not contain control characters, or has the wrong format")


def field_error(message: str, default_field: str = "body") -> FieldError:
    """One msgspec validation message as a field error: `seats` / `Expected int, got str`."""
    field = default_field
    match = _AT_PATH.search(message)
    if match:
        message = message[: match.start()]
        field = match.group(1) or default_field
    named = _NAMED_FIELD.search(message)
    if named:  # the path points at the object; the message names the member
        field = f"{field}.{named.group(1)}" if field != default_field else named.group(1)
    message = _REGEX.sub(_pattern_hint, message)
    return FieldError(re.sub(r"\[(\d+)\]", r".\1", field), message)


_QUERY_PARAMETER = re.compile(r"parameter '([^']+)'")


def _field_errors(exc: ValidationException) -> list[FieldError]:
    """Litestar's parameter/body errors (`extra` is a list of {"key", "message"}) as field errors."""
    errors = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            key = str(item.get("key") or "").rstrip("_")  # `from_` is the query parameter `from`
            errors.append(field_error(str(item.get("message", "invalid value")), key or "body"))
    if not errors:
        named = _QUERY_PARAMETER.search(exc.detail or "")
        errors.append(FieldError(named.group(1) if named else "body", exc.detail or "invalid value"))
    return errors


def http_exception_handler(request: Request, exc: HTTPException) -> Response[bytes]:
    """Litestar's own errors (routing, body decoding, parameters) as problem documents."""
    if isinstance(exc, ValidationException):
        errors = _field_errors(exc)
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
        return problem_response(422, "Validation failed", detail, "validation", {"errors": errors})
    status = exc.status_code
    titles = {
        400: ("Bad request", exc.detail or "The request could not be read.", "bad-request"),
        404: ("Not found", "No resource at this URL.", "not-found"),
        405: ("Method not allowed", f"{request.method} is not allowed on this URL.", "method-not-allowed"),
        413: ("Payload too large", "The request body is over the 1 MiB limit.", "payload-too-large"),
    }
    title, detail, slug = titles.get(status, (exc.detail or "Error", exc.detail or "Error", "http-error"))
    return problem_response(status, title, detail, slug, headers=exc.headers)


OUTAGE_RETRY_AFTER_SECONDS = 5


def outage(exc: BaseException) -> ServiceUnavailable | None:
    """The 503 to answer when `exc` says a dependency (database, Redis) is down, else None."""
    if is_database_outage(exc):
        return ServiceUnavailable("The database is unavailable; try again shortly.", OUTAGE_RETRY_AFTER_SECONDS)
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return ServiceUnavailable("Redis is unavailable; try again shortly.", OUTAGE_RETRY_AFTER_SECONDS)
    return None


def internal_error_handler(request: Request, exc: Exception) -> Response[bytes]:
    """Anything unexpected: a dependency that is down is a 503; the rest is logged, never a stack trace."""
    unavailable = outage(exc)
    if unavailable is not None:
        log.warning("%s %s: %s (%s)", request.method, request.url.path, unavailable.detail, exc)
        return app_error_handler(request, unavailable)
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(500, "Internal server error", "Something went wrong on our side.", "internal")


EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {
    AppError: app_error_handler,
    HTTPException: http_exception_handler,
    Exception: internal_error_handler,
}
