"""HTTP endpoints for registration, tokens, `/v1/me` and admin user management."""

import uuid
from typing import Literal

from litestar import Controller, Request, get, patch, post
from litestar.di import Provide

from app.accounts import services
from app.accounts.schemas import (
    RegisterRequest,
    RegisterResponse,
    StreamTokenResponse,
    TokenRequest,
    TokenResponse,
    UserRead,
    UserUpdate,
)
from app.pagination import DEFAULT_LIMIT, Limit, Page
from app.security import AuthUser, TokenCodec, admin_only, current_user


def _tokens(request: Request) -> TokenCodec:
    codec: TokenCodec = request.app.state.tokens
    return codec


class AuthController(Controller):
    path = "/v1/auth"
    tags = ["auth"]

    @post("/register", operation_id="register", status_code=201)
    async def register(self, data: RegisterRequest, request: Request) -> RegisterResponse:
        """Register as a customer or provider. Returns the user and an access token."""
        codec = _tokens(request)
        codec.ensure_can_mint()  # before the user exists, so a refusal changes nothing
        user = await services.create_user(data.email, data.password, data.name, data.role)
        return RegisterResponse(user=user, access_token=codec.access_token(user.id, user.role),
                                expires_in=codec.access_ttl)

    @post("/token", operation_id="issueToken", status_code=200)
    async def token(self, data: TokenRequest, request: Request) -> TokenResponse:
        """Sign in with e-mail and password. Returns an access token (a JWT)."""
        user = await services.authenticate(data.email, data.password, request.app.state.redis)
        codec = _tokens(request)
        return TokenResponse(access_token=codec.access_token(user.id, user.role), expires_in=codec.access_ttl)

    @post("/stream-token", operation_id="issueStreamToken", status_code=200,
          dependencies={"user": Provide(current_user)})
    async def stream_token(self, user: AuthUser, request: Request) -> StreamTokenResponse:
        """A 60-second stream token for the event endpoints (`?access_token=`), so a browser never puts a long-lived
        token in a URL."""
        codec = _tokens(request)
        return StreamTokenResponse(token=codec.stream_token(user.id, user.role), expires_in=codec.stream_ttl,
                                   heartbeat_seconds=request.app.state.settings.sse_heartbeat_seconds)


class MeController(Controller):
    path = "/v1/me"
    tags = ["auth"]
    dependencies = {"user": Provide(current_user)}

    @get("/", operation_id="getMe")
    async def me(self, user: AuthUser) -> UserRead:
        """The signed-in user."""
        return await services.get_user(user.id)


class UserController(Controller):
    path = "/v1/users"
    tags = ["users"]
    dependencies = {"user": Provide(current_user)}
    guards = [admin_only]

    @get("/", operation_id="listUsers")
    async def list_users(
        self, user: AuthUser, role: Literal["customer", "provider", "admin"] | None = None,
        active: bool | None = None, limit: Limit = DEFAULT_LIMIT, cursor: str | None = None,
    ) -> Page[UserRead]:
        """Users, oldest first (admins); filter by `role` and `active`."""
        items, next_cursor = await services.list_users(user, role, active, limit, cursor)
        return Page(items=items, next_cursor=next_cursor)

    @get("/{user_id:uuid}", operation_id="getUser")
    async def get_user(self, user: AuthUser, user_id: uuid.UUID) -> UserRead:
        """One user (admins)."""
        return await services.get_user(user_id)

    @patch("/{user_id:uuid}", operation_id="updateUser")
    async def update_user(self, user: AuthUser, user_id: uuid.UUID, data: UserUpdate, request: Request) -> UserRead:
        """Deactivate or reactivate a user (admins). A deactivated user's tokens and streams end."""
        return await services.update_user(user, user_id, data, request.app.state.effects)
