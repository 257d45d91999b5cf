"""Wire types of the webhooks API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from app.wire import END

EVENT_TYPE_FILTER = rf"^(\*|[a-z][a-z0-9_]*(\.[a-z0-9_]+)*(\.\*)?){END}"
EventTypeFilter = Annotated[str, msgspec.Meta(max_length=100, pattern=EVENT_TYPE_FILTER,
                                              description="An event type, a prefix such as `booking.*`, or `*`.")]
EventTypeFilters = Annotated[list[EventTypeFilter], msgspec.Meta(min_length=1, max_length=50)]
WebhookUrl = Annotated[str, msgspec.Meta(min_length=8, max_length=2000)]
DeliveryStatus = Literal["pending", "succeeded", "failed"]


class WebhookCreate(msgspec.Struct, forbid_unknown_fields=True):
    url: WebhookUrl
    event_types: EventTypeFilters
    active: bool = True


class WebhookUpdate(msgspec.Struct, forbid_unknown_fields=True):
    """A partial update: fields left out stay as they are."""

    url: WebhookUrl | msgspec.UnsetType = msgspec.UNSET
    event_types: EventTypeFilters | msgspec.UnsetType = msgspec.UNSET
    active: bool | msgspec.UnsetType = msgspec.UNSET


class WebhookRead(msgspec.Struct):
    id: uuid.UUID
    url: str
    event_types: list[str]
    active: bool
    created_at: datetime
    updated_at: datetime


class WebhookCreated(WebhookRead, kw_only=True):
    """The answer to a creation: the only time the signing secret is shown."""

    secret: str


class DeliveryRead(msgspec.Struct):
    id: uuid.UUID
    webhook_id: uuid.UUID
    event_id: str
    event_type: str
    status: DeliveryStatus
    response_status: int | None
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime
