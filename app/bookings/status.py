"""The booking status machine: which action leads where, and who may take it.

A caller relates to a booking as its `customer`, the resource's `owner`, or an `admin` (one user
can be several). Anything not in the table is refused with the current status and the actions
that this caller could take now.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Status = Literal["pending", "confirmed", "rejected", "cancelled", "expired", "checked_in", "completed"]
Relation = Literal["customer", "owner", "admin"]



class Transition(msgspec.Struct, frozen=True):
    """`action` moves a booking from one of `sources` to `target` (None: the status stays)."""

    action: str
    sources: frozenset[str]
    target: str | None
    allowed: frozenset[str]
    event: str


TRANSITIONS: dict[str, Transition] = {
    t.action: t
    for t in (
        Transition("confirm", frozenset({"pending"}), "confirmed", frozenset({"owner", "admin"}),
                   "booking.confirmed"),
        Transition("reject", frozenset({"pending"}), "rejected", frozenset({"owner", "admin"}),
                   "booking.rejected"),
        Transition("cancel", frozenset({"pending", "confirmed"}), "cancelled",
                   frozenset({"customer", "owner", "admin"}), "booking.cancelled"),
        Transition("reschedule", frozenset({"pending", "confirmed"}), None,
                   frozenset({"customer", "owner", "admin"}), "booking.rescheduled"),
        Transition("update", frozenset({"pending", "confirmed", "checked_in"}), None,
                   frozenset({"customer", "owner", "admin"}), "booking.updated"),
        Transition("check-in", frozenset({"confirmed"}), "checked_in", frozenset({"owner", "admin"}),
                   "booking.checked_in"),
        Transition("complete", frozenset({"checked_in"}), "completed", frozenset({"owner", "admin"}),
                   "booking.completed"),
        Transition("expire", frozenset({"pending"}), "expired", frozenset(), "booking.expired"),
    )
}


def may_take(action: str, relations: set[str]) -> bool:
    """True when one of the caller's relations to the booking allows `action` in some status."""
    return bool(TRANSITIONS[action].allowed & relations)


def allowed_actions(status: str, relations: set[str]) -> list[str]:
    """The actions this caller could take on a booking in `status`, in table order."""
    return [t.action for t in TRANSITIONS.values() if status in t.sources and t.allowed & relations]
