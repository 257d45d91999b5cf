"""Email: rendering with sandboxed Jinja2, and sending by SMTP or into the outbox folder.

Templates are the defaults shipped in `workers/templates/` (`<key>.subject.j2`, `.txt.j2`,
`.html.j2`) unless an admin stored an override. Rendering happens in `workers.sandbox`: another
process, an immutable sandbox, bounded time and output; `StrictUndefined` makes a missing variable an
error, so a broken template is refused when it is saved (`check_template`) rather than when a
customer should have been mailed.

A message goes to exactly one recipient: the SMTP envelope is given explicitly (never read from
the headers), and an address that is not a plain `Email` (one stored before addresses were checked
strictly) is `Undeliverable` at once.
"""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from functools import cache
from pathlib import Path
from typing import Any

import msgspec

from app.settings import Settings
from app.wire import EMAIL_PATTERN
from workers.sandbox import PARTS, TemplateProblem, render_here, render_pool

__all__ = ["TemplateProblem"]  # re-exported: the API's template endpoints refuse with it

log = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).parent / "templates"
TEMPLATE_KEYS = (
    "booking.created.customer", "booking.created.owner", "booking.confirmed.customer",
    "booking.rejected.customer", "booking.cancelled.customer", "booking.cancelled.owner",
    "booking.rescheduled.customer", "booking.rescheduled.owner", "booking.completed.customer",
    "booking.expired.customer", "reminder.owner", "reminder.customer",
)
_SUFFIX = {"subject": "subject.j2", "text": "txt.j2", "html": "html.j2"}
_PLAIN_ADDRESS = re.compile(EMAIL_PATTERN)

# What every template may use; the preview fills it with these values unless given others.
SAMPLE_CONTEXT: dict[str, Any] = {
    "app_url": "https://bookwire.example",
    "link": "https://bookwire.example/bookings/00000000-0000-4000-8000-000000000000",
    "recipient": {"name": "Carol Customer", "email": "carol@example.com", "role": "customer"},
    "customer": {"name": "Carol Customer", "email": "carol@example.com"},
    "owner": {"name": "Paula Provider", "email": "paula@example.com"},
    "resource": {"id": "00000000-0000-4000-8000-000000000001", "name": "Quiet room", "timezone": "Europe/Paris"},
    "booking": {
        "id": "00000000-0000-4000-8000-000000000000", "status": "confirmed", "seats": 1, "notes": "",
        "starts_at": "2030-01-01T09:00:00Z", "ends_at": "2030-01-01T10:00:00Z",
        "starts_at_local": "2030-01-01 10:00", "ends_at_local": "2030-01-01 11:00",
        "price_cents": 1500, "currency": "EUR",
    },
    "reason": None,
    "reminder": {"offset_seconds": 3600, "starts_in": "1 hour"},
}


class Undeliverable(ValueError):
    """A recipient no message can go to (not a plain address, or a deactivated account): no retry helps."""


class Rendered(msgspec.Struct):
    subject: str
    text: str
    html: str


@cache
def default_template(key: str) -> dict[str, str]:
    """The shipped subject, text and html of `key`."""
    return {part: (TEMPLATE_DIR / f"{key}.{_SUFFIX[part]}").read_text() for part in PARTS}


@cache
def _shipped_sources() -> frozenset[str]:
    return frozenset(source for key in TEMPLATE_KEYS for source in default_template(key).values())


def render(template: dict[str, str], context: dict[str, Any]) -> Rendered:
    """Render the three parts (blocking: from an event loop, call it in a thread); TemplateProblem
    names the part that failed. Only what an admin wrote goes to the sandbox's helper processes:
    the shipped templates are our own code, rendered here (0.08 ms instead of 1.0 ms per email here)."""
    if all(template[part] in _shipped_sources() for part in PARTS):
        out = render_here(template, context)
    else:
        out = render_pool().render(template, context)
    # A subject is one header line: a newline in it would let the template add headers.
    out["subject"] = " ".join(out["subject"].split())
    return Rendered(**out)


def check_template(template: dict[str, str]) -> None:
    """Refuse a template that would fail for a real booking (TemplateProblem)."""
    for part in PARTS:
        if not template[part].strip() and part != "html":
            raise TemplateProblem(part, "must not be empty")
    render(template, SAMPLE_CONTEXT)


def check_recipient(to_address: str) -> None:
    """Undeliverable unless `to_address` is one plain address (the rule of `app.wire.Email`)."""
    if len(to_address) > 254 or not _PLAIN_ADDRESS.match(to_address):
        raise Undeliverable(f"{to_address[:300]!r} is not a single plain email address; not sent")


def build_message(settings: Settings, to_address: str, rendered: Rendered, message_id: str) -> EmailMessage:
    """A multipart/alternative message (text and HTML) with a stable Message-ID."""
    message = EmailMessage()
    message["Subject"] = rendered.subject
    message["From"] = settings.smtp_from
    message["To"] = to_address
    message["Message-ID"] = message_id
    message["Date"] = format_datetime(datetime.now(UTC))
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    return message


def new_message_id(delivery_id: str, settings: Settings) -> str:
    """`<delivery-id@host>`: the same on every retry, so receivers can tell a resend."""
    domain = settings.smtp_from.rsplit("@", 1)[-1].strip("> ") or "bookwire.local"
    return f"<{delivery_id}@{domain}>"


def deliver(settings: Settings, message: EmailMessage, delivery_id: str, to_address: str) -> None:
    """Send by SMTP when SMTP_HOST is set, else write `$DATA_DIR/outbox/<delivery id>.eml`.

    The envelope is `to_address` alone: `send_message` would otherwise take its recipients from the
    To/Cc/Bcc headers, which must never be able to add one."""
    check_recipient(to_address)
    if settings.smtp_host is None:
        outbox = settings.data_dir / "outbox"
        outbox.mkdir(parents=True, exist_ok=True)
        path = outbox / f"{delivery_id}.eml"
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(bytes(message))
        temporary.replace(path)  # atomic: a reader never sees half a message, a retry overwrites
        log.info("simulation mode: email %s to %s written to %s", message["Message-ID"], message["To"], path)
        return
    with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.email_send_timeout) as smtp:
        if settings.smtp_starttls:
            smtp.starttls(context=ssl.create_default_context())
        if settings.smtp_username:
            smtp.login(settings.smtp_username, settings.smtp_password or "")
        smtp.send_message(message, from_addr=parseaddr(settings.smtp_from)[1] or settings.smtp_from,
                          to_addrs=[to_address])
    log.info("email %s sent to %s through %s", message["Message-ID"], message["To"], settings.smtp_host)
