"""Wire types of the email admin endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

TemplateText = Annotated[str, msgspec.Meta(max_length=100_000)]


class TemplateRead(msgspec.Struct):
    key: str
    subject: str
    text: str
    html: str
    is_default: bool
    updated_at: datetime | None


class TemplateWrite(msgspec.Struct, forbid_unknown_fields=True):
    subject: Annotated[str, msgspec.Meta(min_length=1, max_length=2_000)]
    text: TemplateText
    html: TemplateText


class PreviewRequest(msgspec.Struct, forbid_unknown_fields=True):
    context: dict[str, Any] | None = None


class PreviewRead(msgspec.Struct):
    subject: str
    text: str
    html: str


class DeliveryRead(msgspec.Struct):
    id: uuid.UUID
    template_key: str
    booking_id: uuid.UUID | None
    to_address: str
    status: Literal["queued", "sent", "failed"]
    attempts: int
    last_error: str | None
    message_id: str
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    next_attempt_at: datetime | None = None
    """When a queued delivery's retry is due (null: its first attempt, or none left to make)."""


class EmailFailedAlert(msgspec.Struct, tag_field="kind", tag="email_failed"):
    """`system.alert`'s data when an email failed for good (`kind`: `email_failed`)."""

    delivery_id: uuid.UUID
    to: str
    template_key: str
    attempts: int
    error: str
