"""Tokens and passwords: JWT minting and verification pinned to one algorithm, argon2id hashing,
and the `current_user` dependency every protected handler uses.

Kinds of token, all signed with the configured key and carrying `iss`/`aud`/`iat`/`exp`:
- access token: `sub` (user id), `role`; also accepted from an external identity provider that
  signs with the same key and claims; lives at most `MAX_USER_TOKEN_SECONDS` (or ACCESS_TOKEN_TTL);
- stream token: the same plus `token_use: "stream"`, 60 s, accepted only by the event endpoints
  (`GET /v1/events/stream`, `GET /v1/events/poll`);
- service token: `scope` containing `events:publish`, accepted only by `POST /v1/events`.
A token that claims to be two kinds at once is refused everywhere.

A user's tokens die together: every token issued (`iat`) before the account's
`tokens_valid_after` (set by a deactivation, a password change or a promotion) is refused. Tokens
Bookwire mints carry `iat` to the millisecond, so a token minted right after such a change works.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal, NamedTuple, TypeVar

import jwt
import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from litestar.connection import ASGIConnection

from app.db.prepared import Prepared
from app.db.tables import User
from app.errors import PermissionDenied, ServiceUnavailable, Unauthorized
from app.logs import note_user
from app.settings import Settings

Role = Literal["customer", "provider", "admin"]
STREAM_TOKEN_USE = "stream"
PUBLISH_SCOPE = "events:publish"
WEBHOOKS_SCOPE = "webhooks:manage"
SERVICE_SCOPES = frozenset({PUBLISH_SCOPE, WEBHOOKS_SCOPE})
"""A token whose `scope` grants any of these is an integrator's service token, never a user's."""

_hasher = PasswordHasher()  # RFC 9106 low-memory profile: argon2id, 64 MiB, t=3
# Verified against when the e-mail is unknown, so a wrong e-mail costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash("not-a-real-password")


async def hash_password(password: str) -> str:
    """argon2id hash, computed off the event loop (it takes tens of milliseconds by design)."""
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password: str, password_hash: str | None) -> bool:
    """True when `password` matches; constant work whether or not the user exists."""

    def check() -> bool:
        try:
            return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)


class AuthUser(msgspec.Struct, frozen=True):
    """The signed-in user a request acts for."""

    id: uuid.UUID
    role: Role
    email: str
    name: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


MAX_TOKEN_BYTES = 8192
"""A JWT longer than this is refused before it is parsed (ours are ~300 bytes)."""
MAX_USER_TOKEN_SECONDS = 24 * 3600
"""The longest life (`exp - iat`) accepted for an access or stream token, unless ACCESS_TOKEN_TTL is longer."""
MAX_SERVICE_TOKEN_SECONDS = 366 * 86400
"""The longest life accepted for a service token."""

TokenKind = Literal["access", "stream", "service"]
VERIFIED_TOKENS_KEPT = 10_000
"""How many verified tokens one process remembers: its busiest clients (about 1.2 KB each, so
12 MB at most). 1,000 thrashed when 4,000 conversation participants posted in turn
(bench/conversations.py): every request verified its JWT again, 7 % of the API's CPU."""


class TokenCodec:
    """Mints and verifies JWTs with the one algorithm, issuer and audience configured."""

    def __init__(self, settings: Settings) -> None:
        self.algorithm = settings.jwt_algorithm
        self.issuer = settings.jwt_issuer
        self.audience = settings.jwt_audience
        self.access_ttl = settings.access_token_ttl
        self.stream_ttl = settings.stream_token_ttl
        self._signing_key = settings.jwt_signing_key
        self._verifying_key = settings.jwt_verifying_key
        self._max_life: dict[TokenKind, int] = {
            "access": max(MAX_USER_TOKEN_SECONDS, self.access_ttl),
            "stream": max(MAX_USER_TOKEN_SECONDS, self.stream_ttl),
            "service": MAX_SERVICE_TOKEN_SECONDS,
        }
        self._verified: dict[str, dict[str, Any]] = {}  # token -> its claims, least recently used first

    def ensure_can_mint(self) -> None:
        """503 when only a public key is configured (tokens then come from an identity provider)."""
        if self._signing_key is None:
            raise ServiceUnavailable(
                "This deployment only verifies tokens; set JWT_PRIVATE_KEY to let Bookwire issue them."
            )

    def mint(self, user_id: uuid.UUID, role: str, ttl: int, **claims: Any) -> str:
        """A signed token for `user_id`, issued now (to the millisecond, see the module docstring)."""
        self.ensure_can_mint()
        assert self._signing_key is not None
        now = issued_now()
        payload = {"sub": str(user_id), "role": role, "iat": now, "exp": int(now) + ttl,
                   "iss": self.issuer, "aud": self.audience, **claims}
        return jwt.encode(payload, self._signing_key, algorithm=self.algorithm)

    def service_token(self, name: str, scope: str, ttl: int) -> str:
        """An integrator's token: `sub` is `name`, `scope` space-separated (`bookwire service-token`)."""
        self.ensure_can_mint()
        assert self._signing_key is not None
        now = issued_now()
        payload = {"sub": name, "scope": scope, "iat": now, "exp": int(now) + ttl,
                   "iss": self.issuer, "aud": self.audience}
        return jwt.encode(payload, self._signing_key, algorithm=self.algorithm)

    def access_token(self, user_id: uuid.UUID, role: str) -> str:
        return self.mint(user_id, role, self.access_ttl)

    def stream_token(self, user_id: uuid.UUID, role: str) -> str:
        return self.mint(user_id, role, self.stream_ttl, token_use=STREAM_TOKEN_USE)

    def decode(self, token: str) -> dict[str, Any]:
        """Verified claims, or 401. Only the configured algorithm is accepted (never `none`), and
        the time claims must be numbers with a sane lifetime (PyJWT alone accepts `"exp": "123"`).

        A token verified once is remembered (`VERIFIED_TOKENS_KEPT` of them) until it expires: a
        client sends the same token with every request, and checking its signature and claims again
        cost a tenth of an authenticated read. Stream tokens (one per connection) are not kept. Only
        what is already valid is kept (its `iat` and `nbf` have passed, so they stay passed); `exp`
        is checked on every use. The claims returned are shared: callers must not change them."""
        known = self._verified.pop(token, None)
        if known is not None:
            if known["exp"] > time.time():
                self._verified[token] = known  # now the most recently used: the last to be forgotten
                return known
            raise Unauthorized("The token has expired; sign in again.")
        claims = self._verify(token)
        if token_kind(claims) == "stream":
            return claims  # made for one connection, used once or twice: remembering it only costs memory
        if len(self._verified) >= VERIFIED_TOKENS_KEPT:
            del self._verified[next(iter(self._verified))]  # the least recently used
        self._verified[token] = claims
        return claims

    def _verify(self, token: str) -> dict[str, Any]:
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthorized(f"The token is invalid: longer than {MAX_TOKEN_BYTES} bytes.")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._verifying_key,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The token has expired; sign in again.") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("The token is not valid yet.") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"The token is invalid: {exc}.") from None
        for name in ("exp", "iat", "nbf"):
            if name in claims and not _is_number(claims[name]):
                raise Unauthorized(f"The token is invalid: `{name}` must be a number of seconds.")
        if not isinstance(claims["sub"], str):
            raise Unauthorized("The token is invalid: `sub` must be a string.")
        kind = token_kind(claims)
        if claims["exp"] - claims["iat"] > self._max_life[kind]:
            raise Unauthorized(f"The token is invalid: a {kind} token may live at most {self._max_life[kind]} s.")
        return claims


def issued_now() -> float:
    """The `iat` of a token minted now: seconds, to the millisecond (never after the real time)."""
    return int(time.time() * 1000) / 1000


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value  # not NaN


def parse_bearer(header: str | None, how_to: str) -> str:
    """The token in an `Authorization: Bearer ...` header value, or 401 saying `how_to` send one."""
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(how_to)
    return token.strip()


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The token in `Authorization: Bearer ...`, or 401."""
    return parse_bearer(connection.headers.get("authorization"),
                        "Send `Authorization: Bearer <access token>`; get one from POST /v1/auth/token.")


def token_scopes(claims: dict[str, Any]) -> set[str]:
    """The `scope` claim (a space-separated string or a list) as a set."""
    scope = claims.get("scope", "")
    return set(scope.split()) if isinstance(scope, str) else {s for s in scope if isinstance(s, str)} \
        if isinstance(scope, list) else set()


def is_service_token(claims: dict[str, Any]) -> bool:
    """True when the `scope` claim grants `events:publish` or `webhooks:manage`."""
    return bool(token_scopes(claims) & SERVICE_SCOPES)


def token_kind(claims: dict[str, Any]) -> TokenKind:
    """Which kind of token these verified claims make; 401 for a token that claims to be two kinds
    (a stream token with a publish scope) or an unknown `token_use`."""
    use = claims.get("token_use")
    if use is not None and use != STREAM_TOKEN_USE:
        raise Unauthorized("The token is invalid: unknown `token_use`.")
    service = is_service_token(claims)
    if use == STREAM_TOKEN_USE and service:
        raise Unauthorized("The token is invalid: a token is either a stream token or a service token, not both.")
    return "stream" if use == STREAM_TOKEN_USE else "service" if service else "access"


class _Account(NamedTuple):
    user: AuthUser
    active: bool
    valid_after: float | None  # `tokens_valid_after` as a Unix time
    read_at: float  # time.monotonic() when it was read


ACCOUNT_MEMORY_SECONDS = 30.0
"""How long a process trusts what it read about an account without reading it again. Changes that
matter (deactivation, reactivation, token revocation) are also announced by a `forget_user` control
message from the change's outbox, so every process forgets them within milliseconds; this bound
only covers a control message lost while a process was cut off from Redis (it also forgets
everything when it resubscribes)."""
MAX_REMEMBERED_ACCOUNTS = 100_000
_accounts: dict[uuid.UUID, _Account] = {}


def forget_account(user_id: uuid.UUID | None) -> None:
    """Read this account (or, for None, every account) from the database on its next request."""
    if user_id is None:
        _accounts.clear()
    else:
        _accounts.pop(user_id, None)


_account_row = Prepared(User, lambda user_id: User.select(
    User.id, User.role, User.email, User.name, User.active, User.tokens_valid_after).where(User.id == user_id),
    uuid.UUID)


async def _account(user_id: uuid.UUID) -> _Account | None:
    account = _accounts.get(user_id)
    if account is not None and time.monotonic() - account.read_at < ACCOUNT_MEMORY_SECONDS:
        return account
    rows = await _account_row(user_id)
    if not rows:
        return None
    row = rows[0]
    valid_after = row["tokens_valid_after"]
    account = _Account(AuthUser(id=row["id"], role=row["role"], email=row["email"], name=row["name"]),
                       row["active"], valid_after.timestamp() if valid_after else None, time.monotonic())
    if len(_accounts) >= MAX_REMEMBERED_ACCOUNTS:
        _accounts.clear()
    _accounts[user_id] = account
    return account


async def user_from_claims(claims: dict[str, Any]) -> AuthUser:
    """The active user a token's `sub` names, or 401; also 401 for a token issued before the
    account's tokens were revoked (deactivation, password change, promotion). The account is read
    from the database at most every ACCOUNT_MEMORY_SECONDS per process, not on every request."""
    subject = claims["sub"]
    try:
        user_id = uuid.UUID(subject)
    except (TypeError, ValueError):
        raise Unauthorized("The token's subject is not a user id.") from None
    if str(user_id) != subject:  # one spelling per user: no braces, upper case or missing dashes
        raise Unauthorized("The token's subject is not a user id in canonical form.")
    account = await _account(user_id)
    if account is None:
        raise Unauthorized("The token's user does not exist.")
    if not account.active:
        raise Unauthorized("This account is deactivated.")
    if account.valid_after is not None and claims["iat"] < account.valid_after:
        raise Unauthorized("The token was revoked (the account changed since it was issued); sign in again.")
    note_user(user_id)  # every later log line of this request names its user
    return account.user


Connection = ASGIConnection[Any, Any, Any, Any]
T = TypeVar("T")
Dependency = Callable[[Connection], Awaitable[T]]


def once_per_request(key: str) -> Callable[[Dependency[T]], Dependency[T]]:
    """Keep an authenticating dependency's answer on the request under `key`: `validate_request`
    authenticates before it reads the query and the body (a stranger gets 401, not a lecture about
    their JSON), and the handler then asks again."""

    def decorate(find: Dependency[T]) -> Dependency[T]:
        @functools.wraps(find)
        async def remembered(request: Connection) -> T:
            if key not in request.state:
                request.state[key] = await find(request)
            answer: T = request.state[key]
            return answer

        return remembered

    return decorate


@once_per_request("auth_user")
async def current_user(request: Connection) -> AuthUser:
    """Dependency: the user behind an access token (stream and service tokens are refused here)."""
    codec: TokenCodec = request.app.state.tokens
    claims = codec.decode(bearer_token(request))
    kind = token_kind(claims)
    if kind == "stream":
        raise Unauthorized("A stream token is only valid for /v1/events/stream and /v1/events/poll.")
    if kind == "service":
        raise PermissionDenied("Service tokens may only call POST /v1/events and the webhooks API.")
    return await user_from_claims(claims)


async def admin_or_service(connection: Connection, scope: str, action: str) -> AuthUser | str:
    """Who calls an endpoint that integrators share with admins: the `sub` of a service token whose
    scope has `scope`, or an admin; 401 for a stream token, 403 for anyone else."""
    claims = connection.app.state.tokens.decode(bearer_token(connection))
    kind = token_kind(claims)
    if kind == "stream":
        raise Unauthorized("A stream token is only valid for GET /v1/events/stream and /v1/events/poll.")
    if kind == "service":
        if scope not in token_scopes(claims):
            raise PermissionDenied(f"This service token's scope does not include {scope}.")
        return str(claims["sub"])
    user = await user_from_claims(claims)
    if not user.is_admin:
        raise PermissionDenied(f"Only admins and service tokens with the {scope} scope may {action}.")
    return user


async def admin_only(connection: ASGIConnection[Any, Any, Any, Any], _: Any) -> None:
    """Guard: 403 unless the caller is an admin (after the usual 401 for a missing or bad token)."""
    user = await current_user(connection)
    if not user.is_admin:
        raise PermissionDenied("Only admins may do this.")
