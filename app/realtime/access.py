"""Who is on the other end of an event connection, and which channels they may read.

The event endpoints accept an access token or a stream token in `Authorization: Bearer`, or a
stream token in `?access_token=` (never a long-lived token in a URL). Every user reads
`user:<own id>`, `role:<own role>` and `broadcast`; `topics` may add `resource:<id>` of an active
resource, and admins may add any `user:` or `role:` channel. Anything else is 403.
"""

from __future__ import annotations

import uuid
from typing import Any

from app.db.tables import Resource, User
from app.errors import PermissionDenied, Unauthorized
from app.realtime.events import BROADCAST, is_channel, role_channel, user_channel
from app.security import AuthUser, TokenCodec, parse_bearer, token_kind, user_from_claims

MAX_TOPICS = 50


class EventPrincipal:
    """The user of an event connection and when their token stops being valid (None: never checked)."""

    __slots__ = ("expires_at", "user")

    def __init__(self, user: AuthUser, expires_at: float | None) -> None:
        self.user = user
        self.expires_at = expires_at


async def event_principal(codec: TokenCodec, authorization: str | None, query_token: str | None) -> EventPrincipal:
    """Authenticate an event connection; 401 for a missing, forged or misplaced token, 403 for a
    service token."""
    if query_token:
        claims = codec.decode(query_token)
        if token_kind(claims) != "stream":
            raise Unauthorized("Only a stream token (POST /v1/auth/stream-token) may be sent in the URL.")
        return EventPrincipal(await user_from_claims(claims), None)
    claims = codec.decode(
        parse_bearer(authorization, "Send `Authorization: Bearer <token>` or `?access_token=<stream token>`.")
    )
    kind = token_kind(claims)
    if kind == "service":
        raise PermissionDenied("Service tokens may only call POST /v1/events and the webhooks API.")
    user = await user_from_claims(claims)
    # A stream token only has to be valid when the stream opens; an access token bounds the stream.
    expires = None if kind == "stream" else float(claims["exp"])
    return EventPrincipal(user, expires)


async def connection_channels(user: AuthUser, topics: str | None) -> list[str]:
    """The channels this connection reads, own ones first; 403 for a topic the user may not read."""
    channels = [user_channel(user.id), role_channel(user.role), BROADCAST]
    requested = [t.strip() for t in (topics or "").split(",") if t.strip()]
    if len(requested) > MAX_TOPICS:
        raise PermissionDenied(f"At most {MAX_TOPICS} topics per connection.")
    resource_ids: list[uuid.UUID] = []
    for topic in requested:
        if topic in channels:
            continue
        if not is_channel(topic):
            raise PermissionDenied(f"Unknown topic {topic[:100]!r}: use resource:<id>, or user:/role: as an admin.")
        kind, _, rest = topic.partition(":")
        if kind == "resource":
            resource_ids.append(uuid.UUID(rest))
        elif not user.is_admin:
            raise PermissionDenied(f"Only admins may read {kind}: channels of others.")
        channels.append(topic)
    if resource_ids:
        rows: list[dict[str, Any]] = await Resource.select(Resource.id).where(
            Resource.id.is_in(resource_ids), Resource.offered()
        )
        missing = set(resource_ids) - {r["id"] for r in rows}
        if missing:
            raise PermissionDenied(f"resource:{sorted(missing)[0]} is not an active resource.")
    return list(dict.fromkeys(channels))


async def still_active(user_id: uuid.UUID) -> bool:
    """Whether the account is still active, read again once the connection is in the hub.

    A deactivation closes open connections through a control message published after it commits;
    a connection that checked its token before the commit but joined the hub after the message
    went by would miss it. Reading the flag after joining closes that gap: either this read sees
    the deactivation, or the message comes later and finds the connection."""
    row: dict[str, Any] | None = await User.select(User.active).where(User.id == user_id).first()
    return row is not None and bool(row["active"])
