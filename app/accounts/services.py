"""Account rules: registration, sign-in, admin bootstrap, activation. Usable from HTTP and the CLI."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from app.accounts.schemas import UserRead, UserUpdate
from app.accounts.throttle import check_sign_in_allowed, record_failed_sign_in
from app.db.errors import is_unique_violation
from app.db.tables import User
from app.effects import Effects
from app.errors import Conflict, NotFound, PermissionDenied, Unauthorized, Unprocessable
from app.outbox.change import recorded_change
from app.pagination import keyset_page
from app.security import AuthUser, forget_account, hash_password, issued_now, verify_password
from app.wire import is_plain_address


def to_user_read(row: dict[str, Any]) -> UserRead:
    return UserRead(id=row["id"], email=row["email"], name=row["name"], role=row["role"],
                    active=row["active"], created_at=row["created_at"])


_PUBLIC_COLUMNS = (User.id, User.email, User.name, User.role, User.active, User.created_at)


async def create_user(email: str, password: str, name: str, role: str) -> UserRead:
    """Insert a user; 409 when the e-mail (compared case-insensitively) is taken."""
    email = email.strip().lower()
    if await User.exists().where(User.email == email):
        raise Conflict("An account with this e-mail already exists; sign in instead.")
    row: dict[str, Any] = {"id": uuid.uuid4(), "email": email, "name": name, "role": role, "active": True,
           "password_hash": await hash_password(password), "created_at": datetime.now(UTC)}
    try:
        await User.insert(User(**row))
    except Exception as exc:
        if is_unique_violation(exc):  # lost a race with an identical registration
            raise Conflict("An account with this e-mail already exists; sign in instead.") from None
        raise
    return to_user_read(row)


async def authenticate(email: str, password: str, redis: Redis) -> UserRead:
    """The active user with these credentials, or 401 (the same answer for any wrong part), or 429
    after too many failures for this e-mail. A deactivated account gets its own 401 whatever the
    password, so the answer never tells whether a guessed password was right."""
    email = email.strip().lower()
    await check_sign_in_allowed(redis, email)
    row = await User.select().where(User.email == email).first()
    correct = await verify_password(password, row["password_hash"] if row else None)  # same cost either way
    if row is None or not row["active"] or not correct:
        await record_failed_sign_in(redis, email)
        raise Unauthorized("This account is deactivated." if row is not None and not row["active"]
                           else "Wrong e-mail or password.")
    return to_user_read(row)


class AccountNotPromoted(Conflict):
    """The admin e-mail belongs to an account someone registered as a customer or provider."""


async def ensure_admin(email: str, password: str) -> UserRead:
    """Make sure an active admin with this e-mail and password exists (bootstrap and CLI).

    An account someone registered is never promoted: its owner chose the password, and its old
    tokens would become admin tokens. Resetting an existing admin's password revokes its tokens."""
    email = email.strip().lower()
    if not is_plain_address(email):  # the same rule as registration: one plain address
        raise Unprocessable.field("email", f"{email!r} is not a single plain e-mail address such as admin@example.com")
    row = await User.select(*_PUBLIC_COLUMNS, User.password_hash).where(User.email == email).first()
    if row is None:
        try:
            return await create_user(email, password, "Administrator", "admin")
        except Conflict:  # another process bootstrapped the same admin a moment ago
            row = await User.select(*_PUBLIC_COLUMNS, User.password_hash).where(User.email == email).first()
            assert row is not None
    if row["role"] != "admin":
        raise AccountNotPromoted(
            f"{email} belongs to an account registered as a {row['role']}; Bookwire does not turn it into an "
            "admin. Choose another e-mail for the admin (ADMIN_EMAIL or `bookwire create-admin --email`)."
        )
    changes: dict[Any, Any] = {}
    if not row["active"]:
        changes[User.active] = True
    if not await verify_password(password, row["password_hash"]):
        changes.update({User.password_hash: await hash_password(password), User.tokens_valid_after: revoked_now()})
    if changes:
        async with recorded_change(None) as change:  # API relays carry it out (this may be the CLI)
            await User.update(changes).where(User.email == email)
            change.control({"forget_user": str(row["id"])})
        forget_account(row["id"])
    return to_user_read({**row, "active": True})


def revoked_now() -> datetime:
    """A `tokens_valid_after` for now: every token issued before this millisecond stops working."""
    return datetime.fromtimestamp(issued_now(), UTC)


async def get_user(user_id: uuid.UUID) -> UserRead:
    row = await User.select(*_PUBLIC_COLUMNS).where(User.id == user_id).first()
    if row is None:
        raise NotFound("No user with this id.")
    return to_user_read(row)


def require_admin(user: AuthUser) -> None:
    """403 unless `user` is an admin."""
    if not user.is_admin:
        raise PermissionDenied("Only admins may manage users.")


async def list_users(
    admin: AuthUser, role: str | None, active: bool | None, limit: int, cursor: str | None
) -> tuple[list[UserRead], str | None]:
    require_admin(admin)
    query = User.select(*_PUBLIC_COLUMNS)
    if role is not None:
        query = query.where(User.role == role)
    if active is not None:
        query = query.where(User.active == active)
    rows, next_cursor = await keyset_page(query, User, limit, cursor)
    return [to_user_read(r) for r in rows], next_cursor


async def set_active(admin: AuthUser, user_id: uuid.UUID, active: bool, effects: Effects) -> UserRead:
    """Deactivate or reactivate an account; an admin cannot lock themselves out."""
    require_admin(admin)
    user = await get_user(user_id)
    if user_id == admin.id and not active:
        raise PermissionDenied("Admins cannot deactivate their own account.")
    changes: dict[Any, Any] = {User.active: active}
    if not active:  # tokens issued until now must not work again after a reactivation
        changes[User.tokens_valid_after] = revoked_now()
    async with effects.change() as change:
        await User.update(changes).where(User.id == user_id)
        change.control({"forget_user": str(user_id)})  # every API process reads the account again
        if not active:  # end the user's open streams on every API process
            change.control({"close_user": str(user_id), "reason": "deactivated"})
    forget_account(user_id)  # at once in this process
    return to_user_read({**{f: getattr(user, f) for f in user.__struct_fields__}, "active": active})


async def update_user(admin: AuthUser, user_id: uuid.UUID, data: UserUpdate, effects: Effects) -> UserRead:
    """Admin change to an account (only `active` for now); an empty change is 422."""
    require_admin(admin)
    if not isinstance(data.active, bool):
        raise Unprocessable.field("active", "send active: true or false")
    return await set_active(admin, user_id, data.active, effects)
