"""Webhook rules: who manages them, what they match, and the deliveries the outbox relay records
for each published event (the sending is app/webhooks/delivery.py's)."""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from redis.asyncio import Redis

from app.db.tables import Webhook, WebhookDelivery
from app.db.transactions import write_transaction
from app.errors import NotFound, Unprocessable
from app.pagination import keyset_page
from app.realtime.events import Envelope, Event, parse_event_id
from app.webhooks.addresses import RefusedAddress, check_url
from app.webhooks.schemas import DeliveryRead, WebhookCreate, WebhookCreated, WebhookRead, WebhookUpdate

WAKE_CHANNEL = "bookwire:webhooks:wake"
"""Published after deliveries are recorded: dispatchers wake at once instead of at their next look."""
_DELIVERY_IDS = uuid.UUID("6f1d7c1e-3b43-4f51-9a52-0d0b8f1f2a10")


def new_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def matches(filters: Sequence[str], event_type: str) -> bool:
    """Whether a webhook asking for `filters` (types, `prefix.*`, `*`) receives `event_type`."""
    return any(f == "*" or f == event_type or (f.endswith(".*") and event_type.startswith(f[:-1]))
               for f in filters)


def delivery_id(webhook_id: uuid.UUID, event_id: str) -> uuid.UUID:
    """One delivery per webhook and event, whatever the number of relays that record it."""
    return uuid.uuid5(_DELIVERY_IDS, f"{webhook_id}/{event_id}")


def to_webhook_read(row: dict[str, Any]) -> WebhookRead:
    return WebhookRead(**{name: row[name] for name in WebhookRead.__struct_fields__})


def to_delivery_read(row: dict[str, Any]) -> DeliveryRead:
    return DeliveryRead(**{name: row[name] for name in DeliveryRead.__struct_fields__})


async def _checked_url(url: str, allow_private: bool) -> str:
    try:
        await check_url(url, allow_private)
    except RefusedAddress as exc:
        raise Unprocessable.field("url", str(exc)) from None
    return url


async def _row(webhook_id: uuid.UUID) -> dict[str, Any]:
    row = await Webhook.select().where(Webhook.id == webhook_id).output(load_json=True).first()
    if row is None:
        raise NotFound("No webhook with this id.")
    return row


# ---- managing webhooks (admins and service tokens with webhooks:manage; the controller checks) ----

async def create_webhook(data: WebhookCreate, allow_private: bool) -> WebhookCreated:
    url = await _checked_url(data.url, allow_private)
    now = datetime.now(UTC)
    row: dict[str, Any] = {"id": uuid.uuid4(), "url": url, "event_types": list(dict.fromkeys(data.event_types)),
           "active": data.active, "secret": new_secret(), "created_at": now, "updated_at": now}
    await Webhook.insert(Webhook(**row))
    return WebhookCreated(**{name: row[name] for name in WebhookCreated.__struct_fields__})


async def list_webhooks(limit: int, cursor: str | None) -> tuple[list[WebhookRead], str | None]:
    rows, next_cursor = await keyset_page(Webhook.select().output(load_json=True), Webhook, limit, cursor)
    return [to_webhook_read(r) for r in rows], next_cursor


async def get_webhook(webhook_id: uuid.UUID) -> WebhookRead:
    return to_webhook_read(await _row(webhook_id))


async def update_webhook(webhook_id: uuid.UUID, data: WebhookUpdate, allow_private: bool) -> WebhookRead:
    changes: dict[Any, Any] = {name: value for name, value in msgspec.structs.asdict(data).items()
                               if value is not msgspec.UNSET}
    if "url" in changes:
        changes["url"] = await _checked_url(changes["url"], allow_private)
    if "event_types" in changes:
        changes["event_types"] = list(dict.fromkeys(changes["event_types"]))
    async with write_transaction():
        row = await _row(webhook_id)
        if changes:
            changes["updated_at"] = datetime.now(UTC)
            await Webhook.update(changes).where(Webhook.id == webhook_id)
    return to_webhook_read({**row, **changes})


async def delete_webhook(webhook_id: uuid.UUID) -> None:
    """The webhook and its delivery log (what was not sent yet is dropped with it)."""
    async with write_transaction():
        await _row(webhook_id)
        await WebhookDelivery.delete().where(WebhookDelivery.webhook_id == webhook_id)
        await Webhook.delete().where(Webhook.id == webhook_id)


async def list_deliveries(webhook_id: uuid.UUID, limit: int, cursor: str | None,
                          ) -> tuple[list[DeliveryRead], str | None]:
    """The webhook's deliveries, newest first."""
    await _row(webhook_id)
    query = WebhookDelivery.select().where(WebhookDelivery.webhook_id == webhook_id)
    rows, next_cursor = await keyset_page(query, WebhookDelivery, limit, cursor, newest_first=True)
    return [to_delivery_read(r) for r in rows], next_cursor


async def retry_delivery(webhook_id: uuid.UUID, delivery: uuid.UUID, retry_intervals: Sequence[int],
                         redis: Redis) -> DeliveryRead:
    """Send a delivery again now, whatever its status: one more attempt; should it fail, the
    delivery is `failed` again at once (and admins are told again)."""
    now = datetime.now(UTC)
    async with write_transaction():
        row = await WebhookDelivery.select().where(
            WebhookDelivery.id == delivery, WebhookDelivery.webhook_id == webhook_id).first()
        if row is None:
            raise NotFound("No delivery with this id for this webhook.")
        changes: dict[Any, Any] = {"status": "pending", "next_attempt_at": now, "updated_at": now,
                   "attempts": max(row["attempts"], len(retry_intervals))}
        await WebhookDelivery.update(changes).where(WebhookDelivery.id == delivery)
        await Webhook.update({Webhook.blocked_until: None}).where(Webhook.id == webhook_id)
    await redis.publish(WAKE_CHANNEL, b"retry")
    return to_delivery_read({**row, **changes})


# ---- recording deliveries (called by the outbox relay once events are published) ----------------

async def record_deliveries(events: Sequence[Event], node: str | None, redis: Redis) -> int:
    """One pending delivery for each active webhook that matches each event; how many. A delivery
    recorded twice (two relays carried out the same row) is one row: its id comes from the webhook
    and the event. The caller deletes the events' outbox rows only after this returned."""
    hooks = await Webhook.select(Webhook.id, Webhook.event_types).where(
        Webhook.active == True).output(load_json=True).run(node=node)  # noqa: E712
    if not hooks:
        return 0
    now = datetime.now(UTC)
    rows = []
    for event in events:
        for hook in hooks:
            if matches(hook["event_types"], event.type):
                ms, seq = parse_event_id(event.id) or (0, 0)
                envelope = Envelope(event.id, event.type, event.channels[0] if event.channels else None,
                                    event.occurred_at, event.data)
                rows.append(WebhookDelivery(
                    id=delivery_id(hook["id"], event.id), webhook_id=hook["id"], event_id=event.id,
                    event_type=event.type, event_ms=ms, event_seq=seq,
                    payload=msgspec.json.encode(envelope).decode(), status="pending", attempts=0,
                    next_attempt_at=now, created_at=now, updated_at=now))
    if rows:
        async with write_transaction():
            await WebhookDelivery.insert(*rows).on_conflict(action="DO NOTHING")
        await redis.publish(WAKE_CHANNEL, b"new")
    return len(rows)
