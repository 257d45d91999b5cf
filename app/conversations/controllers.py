"""HTTP endpoints of conversations: a booking's messages, receipts and typing; the caller's conversations."""

import uuid
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.di import Provide
from litestar.params import Parameter

from app.conversations import services
from app.conversations.schemas import (
    ConversationRead,
    MessageCreate,
    MessageRead,
    ReceiptRequest,
    UnreadMessages,
)
from app.effects import Effects, provide_effects
from app.pagination import DEFAULT_LIMIT, Limit, Page
from app.security import AuthUser, current_user
from app.wire import NO_CONTROLS_BUT_TAB_NEWLINE

SearchText = Annotated[str | None, Parameter(min_length=1, max_length=200, pattern=NO_CONTROLS_BUT_TAB_NEWLINE,
                                      description="Only messages whose body contains this, ignoring case")]


class MessageController(Controller):
    path = "/v1/bookings/{booking_id:uuid}"
    tags = ["conversations"]
    dependencies = {"user": Provide(current_user), "effects": Provide(provide_effects)}

    @post("/messages", operation_id="postMessage", status_code=201)
    async def post_message(
        self, user: AuthUser, effects: Effects, booking_id: uuid.UUID, data: MessageCreate
    ) -> Response[MessageRead]:
        """201 with the new message; 200 with the first one when its `client_id` was sent before."""
        message, created = await services.post_message(user, booking_id, data, effects)
        return Response(message, status_code=201 if created else 200)

    @get("/messages", operation_id="listMessages")
    async def list_messages(
        self, user: AuthUser, booking_id: uuid.UUID, limit: Limit = DEFAULT_LIMIT, cursor: str | None = None,
        q: SearchText = None,
    ) -> Page[MessageRead]:
        """A booking's conversation, newest first; `q` finds messages containing it, ignoring case."""
        items, next_cursor = await services.list_messages(user, booking_id, limit, cursor, q)
        return Page(items=items, next_cursor=next_cursor)

    @post("/messages/receipts", operation_id="postMessageReceipts", status_code=204)
    async def receipts(self, user: AuthUser, effects: Effects, booking_id: uuid.UUID, data: ReceiptRequest) -> None:
        """Mark messages delivered and/or read up to a message. Publishes `message.receipt`."""
        await services.record_receipts(user, booking_id, data, effects)

    @post("/typing", operation_id="postTyping", status_code=204)
    async def typing(self, user: AuthUser, effects: Effects, booking_id: uuid.UUID) -> None:
        """Tell the other participants that the caller is typing (`conversation.typing`, ephemeral)."""
        await services.typing(user, booking_id, effects)


class ConversationController(Controller):
    path = "/v1/conversations"
    tags = ["conversations"]
    dependencies = {"user": Provide(current_user)}

    @get("/", operation_id="listConversations")
    async def list_conversations(
        self, user: AuthUser, request: Request[Any, Any, Any], limit: Limit = DEFAULT_LIMIT, cursor: str | None = None,
    ) -> Page[ConversationRead]:
        """The caller's conversations that have messages, most recent activity first."""
        items, next_cursor = await services.list_conversations(user, request.app.state.presence, limit, cursor)
        return Page(items=items, next_cursor=next_cursor)

    @get("/unread-count", operation_id="countUnreadMessages")
    async def unread_count(self, user: AuthUser) -> UnreadMessages:
        """How many messages from others the caller has not read."""
        return await services.unread_count(user)
