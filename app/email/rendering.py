"""Email templates: the shipped defaults, rendering with sandboxed Jinja2, and checking an admin's.

Templates are the defaults shipped in `app/email/templates/` (`<key>.subject.j2`, `.txt.j2`,
`.html.j2`) unless an admin stored an override. Rendering happens in `app.email.sandbox`: another
process, an immutable sandbox, bounded time and output; `StrictUndefined` makes a missing variable an
error, so a broken template is refused when it is saved (`check_template`) rather than when a
customer should have been mailed.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import msgspec

from app.email.sandbox import PARTS, TemplateProblem, render_here, render_pool

__all__ = ["TemplateProblem"]  # re-exported: the API's template endpoints refuse with it

TEMPLATE_DIR = Path(__file__).parent / "templates"
TEMPLATE_KEYS = (
    "booking.created.customer", "booking.created.owner", "booking.confirmed.customer",
    "booking.rejected.customer", "booking.cancelled.customer", "booking.cancelled.owner",
    "booking.rescheduled.customer", "booking.rescheduled.owner", "booking.completed.customer",
    "booking.expired.customer", "booking.reassigned.customer", "booking.reassigned.owner", "reminder.owner",
    "reminder.customer", "message.unread",
)
_SUFFIX = {"subject": "subject.j2", "text": "txt.j2", "html": "html.j2"}

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
    "messages": [{"sender": "Paula Provider", "sent_at_local": "2029-12-31 18:05", "body": "See you tomorrow!"}],
    "unread": 1,
    # booking.reassigned.*: where a pooled request was before it moved on (`resource` and `owner` are
    # where it is now); the owner's template serves both owners: `recipient.role` is `owner` for the
    # new one and `previous_owner` for the one it left.
    "reassignment": {
        "from_resource": {"id": "00000000-0000-4000-8000-000000000002", "name": "Blue room",
                          "timezone": "Europe/Paris", "starts_at_local": "2030-01-01 10:00",
                          "ends_at_local": "2030-01-01 11:00"},
        "from_owner": {"name": "Oscar Owner", "email": "oscar@example.com"},
        "expired": False,
    },
}


class Rendered(msgspec.Struct):
    """The three parts of one email, ready to send."""

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


