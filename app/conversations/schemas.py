"""Wire types of conversations: messages, receipts, the caller's conversations."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec

from app.wire import END, NO_CONTROLS_BUT_TAB_NEWLINE, Role

MessageBody = Annotated[str, msgspec.Meta(min_length=1, max_length=4_000, pattern=NO_CONTROLS_BUT_TAB_NEWLINE)]
ClientId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=rf"^[\x20-\x7e]+{END}")]
"""Printable ASCII: what an offline queue uses to name a message before it is sent."""


class MessageCreate(msgspec.Struct, forbid_unknown_fields=True):
    body: MessageBody
    client_id: ClientId | None = None
    """Sending the same `client_id` again within 24 h returns the first message (200) and creates nothing."""


class MessageRead(msgspec.Struct):
    id: uuid.UUID
    booking_id: uuid.UUID
    sender_id: uuid.UUID
    body: str
    client_id: str | None
    created_at: datetime
    delivered_at: datetime | None
    """When every other participant (admins aside) had received it; null until then."""
    read_at: datetime | None


def to_message_read(row: dict[str, Any]) -> MessageRead:
    return MessageRead(id=row["id"], booking_id=row["booking_id"], sender_id=row["sender_id"], body=row["body"],
                       client_id=row["client_id"], created_at=row["created_at"], delivered_at=row["delivered_at"],
                       read_at=row["read_at"])


class ReceiptRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Everything up to these messages, sent by others, is delivered / read (either or both)."""

    delivered_up_to: uuid.UUID | None = None
    read_up_to: uuid.UUID | None = None


class Receipt(msgspec.Struct):
    """`message.receipt`'s data: how far `user_id` has received and read a booking's conversation."""

    booking_id: uuid.UUID
    user_id: uuid.UUID
    delivered_up_to: uuid.UUID | None
    read_up_to: uuid.UUID | None
    at: datetime


class Typing(msgspec.Struct):
    """`conversation.typing`'s data (ephemeral): `user_id` is typing in the booking's conversation."""

    booking_id: uuid.UUID
    user_id: uuid.UUID
    until: Annotated[datetime, msgspec.Meta(description="Typing is over by then unless another event follows.")]


class Participant(msgspec.Struct):
    user_id: uuid.UUID
    name: str
    role: Role
    online: bool
    last_seen_at: datetime | None


class ConversationRead(msgspec.Struct):
    booking_id: uuid.UUID
    resource_id: uuid.UUID
    participants: list[Participant]
    last_message: MessageRead
    unread: int
    """Messages from others that the caller has not read."""


class UnreadMessages(msgspec.Struct):
    unread: int
