"""Wire types of the accounts area."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

import msgspec

from app.wire import Email, Name, Password, Role


class RegisterRequest(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Password
    name: Name
    role: Literal["customer", "provider"]


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Password


class UserRead(msgspec.Struct):
    id: uuid.UUID
    email: str
    name: str
    role: Role
    active: bool
    created_at: datetime


class TokenResponse(msgspec.Struct):
    access_token: str
    expires_in: int
    token_type: str = "bearer"


class RegisterResponse(msgspec.Struct):
    user: UserRead
    access_token: str
    expires_in: int
    token_type: str = "bearer"


class StreamTokenResponse(msgspec.Struct):
    token: str
    expires_in: int
    heartbeat_seconds: int
    """The stream's heartbeat interval (SSE_HEARTBEAT_SECONDS): a client that hears nothing for twice
    this long is behind a buffering proxy (`/client/bookwire.js` then falls back to long-polling)."""


class UserUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """Admin changes to an account; only `active` for now."""

    active: bool | msgspec.UnsetType = msgspec.UNSET
