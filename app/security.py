"""Tokens and passwords: JWT minting and verification pinned to one algorithm, argon2id hashing,
and the `current_user` dependency every protected handler uses.

Kinds of token, all signed with the configured key and carrying `iss`/`aud`:
- access token: `sub` (user id), `role`, `exp`, `iat`; also accepted from an external identity
  provider that signs with the same key and claims;
- stream token: the same plus `token_use: "stream"`, 60 s, accepted only by the event endpoints;
- service token: `scope` containing `events:publish`, accepted only by `POST /v1/events`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Literal

import jwt
import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from litestar.connection import ASGIConnection

from app.db.tables import User
from app.errors import PermissionDenied, ServiceUnavailable, Unauthorized
from app.settings import Settings

Role = Literal["customer", "provider", "admin"]
STREAM_TOKEN_USE = "stream"
PUBLISH_SCOPE = "events:publish"

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

    def ensure_can_mint(self) -> None:
        """503 when only a public key is configured (tokens then come from an identity provider)."""
        if self._signing_key is None:
            raise ServiceUnavailable(
                "This deployment only verifies tokens; set JWT_PRIVATE_KEY to let Bookwire issue them."
            )

    def mint(self, user_id: uuid.UUID, role: str, ttl: int, **claims: Any) -> str:
        """A signed token for `user_id`."""
        self.ensure_can_mint()
        assert self._signing_key is not None
        now = int(time.time())
        payload = {"sub": str(user_id), "role": role, "iat": now, "exp": now + ttl,
                   "iss": self.issuer, "aud": self.audience, **claims}
        return jwt.encode(payload, self._signing_key, algorithm=self.algorithm)

    def access_token(self, user_id: uuid.UUID, role: str) -> str:
        return self.mint(user_id, role, self.access_ttl)

    def stream_token(self, user_id: uuid.UUID, role: str) -> str:
        return self.mint(user_id, role, self.stream_ttl, token_use=STREAM_TOKEN_USE)

    def decode(self, token: str) -> dict[str, Any]:
        """Verified claims, or 401. Only the configured algorithm is accepted (never `none`)."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._verifying_key,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The token has expired; sign in again.") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("The token is not valid yet.") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"The token is invalid: {exc}.") from None
        return claims


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


def is_service_token(claims: dict[str, Any]) -> bool:
    """True when the `scope` claim (a space-separated string or a list) grants `events:publish`."""
    scope = claims.get("scope", "")
    scopes = set(scope.split()) if isinstance(scope, str) else set(scope) if isinstance(scope, list) else set()
    return PUBLISH_SCOPE in scopes


async def user_from_claims(claims: dict[str, Any]) -> AuthUser:
    """The active user a token's `sub` names, or 401."""
    try:
        user_id = uuid.UUID(str(claims["sub"]))
    except (KeyError, ValueError):
        raise Unauthorized("The token's subject is not a user id.") from None
    row = await User.select(User.id, User.role, User.email, User.name, User.active).where(
        User.id == user_id
    ).first()
    if row is None:
        raise Unauthorized("The token's user does not exist.")
    if not row["active"]:
        raise Unauthorized("This account is deactivated.")
    return AuthUser(id=row["id"], role=row["role"], email=row["email"], name=row["name"])


async def current_user(request: ASGIConnection[Any, Any, Any, Any]) -> AuthUser:
    """Dependency: the user behind an access token (stream and service tokens are refused here).

    The result is kept on the request, because `validate_body` authenticates before the body is
    read (a stranger gets 401, not a lecture about their JSON) and the handler needs it again."""
    cached: AuthUser | None = request.state.get("auth_user")
    if cached is not None:
        return cached
    user = await _authenticate(request)
    request.state.auth_user = user
    return user


async def _authenticate(request: ASGIConnection[Any, Any, Any, Any]) -> AuthUser:
    codec: TokenCodec = request.app.state.tokens
    claims = codec.decode(bearer_token(request))
    if claims.get("token_use") == STREAM_TOKEN_USE:
        raise Unauthorized("A stream token is only valid for /v1/events/stream and /v1/events/poll.")
    if is_service_token(claims):
        raise PermissionDenied("Service tokens may only call POST /v1/events.")
    return await user_from_claims(claims)
