"""Queueing emails, the admin's templates, and the delivery log.

The API never talks SMTP: it stores an `email_deliveries` row (status `queued`, with everything the
template needs) in the transaction of the change that sends it, and records the `send_email` job in
that change's outbox (`app.email.delivery` sends it). The row makes
sending idempotent and visible in `GET /v1/admin/emails`. Which emails a booking change sends is the
bookings area's business (`app/bookings/emails.py`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from app.db.prepared import insert_rows
from app.db.tables import EmailDelivery, EmailTemplate
from app.email.rendering import (
    PARTS,
    SAMPLE_CONTEXT,
    TEMPLATE_KEYS,
    TemplateProblem,
    check_template,
    default_template,
    render,
)
from app.email.schemas import DeliveryRead, TemplateRead, TemplateWrite
from app.email.sending import new_message_id
from app.errors import BadRequest, NotFound, Unprocessable
from app.job_queue import EMAIL_QUEUE, SEND_EMAIL, email_job_id
from app.outbox.change import Change
from app.pagination import keyset_page
from app.settings import Settings


@dataclass(frozen=True)
class NewEmail:
    """One message to queue: a template, its recipient and the template's variables."""

    template_key: str
    to_address: str
    context: dict[str, Any]
    booking_id: uuid.UUID | None


async def queue_emails(change: Change, settings: Settings, emails: list[NewEmail]) -> list[uuid.UUID]:
    """Record the deliveries in one INSERT inside `change`; their jobs are enqueued once it commits."""
    if not emails:
        return []
    now = datetime.now(UTC)
    ids = [uuid.uuid4() for _ in emails]
    await insert_rows(EmailDelivery, [{
        "id": delivery_id, "template_key": email.template_key, "booking_id": email.booking_id,
        "to_address": email.to_address, "context": msgspec.json.encode(email.context).decode(), "status": "queued",
        "attempts": 0, "last_error": None, "message_id": new_message_id(str(delivery_id), settings),
        "claimed_until": None, "created_at": now, "updated_at": now, "sent_at": None,
    } for delivery_id, email in zip(ids, emails, strict=True)])
    # One job for all of them: a job costs a worker ~4 ms of RQ's own work (52 Redis commands), as
    # much as sending a message; the deliveries are still claimed, sent and retried one by one.
    change.enqueue(SEND_EMAIL, *(str(delivery_id) for delivery_id in ids), job_id=email_job_id(ids[0], 1),
                   queue=EMAIL_QUEUE)
    return ids


# ---- templates (admin) -------------------------------------------------------------------------


def _check_key(key: str) -> None:
    if key not in TEMPLATE_KEYS:
        raise NotFound(f"No email template {key[:80]!r}; keys are: {', '.join(TEMPLATE_KEYS)}.")


def template_in_effect(key: str, override: dict[str, Any] | None) -> dict[str, str]:
    """The admin's override of `key` (a row with `subject`, `text`, `html`), else the shipped default."""
    return {p: override[p] for p in PARTS} if override else default_template(key)


async def effective_template(key: str) -> dict[str, str]:
    """The template `key` in effect."""
    return template_in_effect(key, await EmailTemplate.select().where(EmailTemplate.key == key).first())


def _to_template_read(key: str, row: dict[str, Any] | None) -> TemplateRead:
    if row is None:
        return TemplateRead(key=key, is_default=True, updated_at=None, **default_template(key))
    return TemplateRead(key=key, subject=row["subject"], text=row["text"], html=row["html"], is_default=False,
                        updated_at=row["updated_at"])


async def get_template(key: str) -> TemplateRead:
    """The effective template of `key` (404 for a key that does not exist)."""
    _check_key(key)
    return _to_template_read(key, await EmailTemplate.select().where(EmailTemplate.key == key).first())


def _template_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(f"template:{key}".encode()).decode().rstrip("=")


def _after_template(cursor: str) -> int:
    """The position in TEMPLATE_KEYS after the key `cursor` names, or 400."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    key = text.removeprefix("template:")
    if not text.startswith("template:") or key not in TEMPLATE_KEYS:
        raise BadRequest("The cursor is not one this API returned; start again without `cursor`.",
                         errors=[{"field": "cursor", "message": "unreadable cursor"}])
    return TEMPLATE_KEYS.index(key) + 1


async def list_templates(limit: int, cursor: str | None) -> tuple[list[TemplateRead], str | None]:
    """One page of the templates in their fixed order (the keys are a short fixed list, so the cursor
    is simply the last key given)."""
    start = _after_template(cursor) if cursor else 0
    keys = list(TEMPLATE_KEYS[start:start + limit])
    if not keys:
        return [], None
    rows = {row["key"]: row for row in await EmailTemplate.select().where(EmailTemplate.key.is_in(keys))}
    items = [_to_template_read(key, rows.get(key)) for key in keys]
    return items, _template_cursor(keys[-1]) if start + limit < len(TEMPLATE_KEYS) else None


def _refuse(problem: TemplateProblem) -> Unprocessable:
    return Unprocessable.field(problem.part, problem.message)


async def put_template(key: str, data: TemplateWrite) -> TemplateRead:
    """Store an override after checking it renders in the sandbox with every variable defined."""
    _check_key(key)
    template: dict[Any, Any] = {"subject": data.subject, "text": data.text, "html": data.html}
    try:
        await asyncio.to_thread(check_template, template)  # another process renders; this loop stays free
    except TemplateProblem as problem:
        raise _refuse(problem) from None
    now = datetime.now(UTC)
    if await EmailTemplate.exists().where(EmailTemplate.key == key):
        await EmailTemplate.update({**template, "updated_at": now}).where(EmailTemplate.key == key)
    else:
        await EmailTemplate.insert(EmailTemplate(key=key, updated_at=now, **template))
    return await get_template(key)


async def delete_template(key: str) -> None:
    _check_key(key)
    await EmailTemplate.delete().where(EmailTemplate.key == key)


async def preview_template(key: str, context: dict[str, Any] | None) -> dict[str, str]:
    """Render the effective template with the sample context, overridden by `context`."""
    _check_key(key)
    merged = {**SAMPLE_CONTEXT, **(context or {})}  # the sandbox renders a copy: a template cannot change these
    try:
        rendered = await asyncio.to_thread(render, await effective_template(key), merged)
    except TemplateProblem as problem:
        raise _refuse(problem) from None
    return msgspec.structs.asdict(rendered)


# ---- delivery log (admin) ----------------------------------------------------------------------


def to_delivery_read(row: dict[str, Any]) -> DeliveryRead:
    """A delivery as admins see it: `sending` (an attempt in progress) shows as `queued`."""
    values = {name: row[name] for name in DeliveryRead.__struct_fields__}
    values["status"] = "queued" if values["status"] == "sending" else values["status"]
    return DeliveryRead(**values)


async def list_deliveries(
    status: str | None, booking_id: uuid.UUID | None, limit: int, cursor: str | None
) -> tuple[list[DeliveryRead], str | None]:
    query = EmailDelivery.select()
    if status is not None:
        query = query.where(EmailDelivery.status.is_in(["queued", "sending"] if status == "queued" else [status]))
    if booking_id is not None:
        query = query.where(EmailDelivery.booking_id == booking_id)
    rows, next_cursor = await keyset_page(query, EmailDelivery, limit, cursor, newest_first=True)
    return [to_delivery_read(r) for r in rows], next_cursor
