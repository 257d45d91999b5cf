"""The booking status machine over HTTP: every allowed and every refused transition, roles, seats.

The SPEC's status table is restated below (`TABLE`) independently of the app's own code, and the
matrices of allowed and disallowed transitions are derived from it. Each test builds a fresh
resource and drives a booking into the status it needs through the public API (`ROUTE`), recording
the history entries that the API should then report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import pytest
from conftest import Actor, Cast, assert_problem, at, make_booking, make_resource

Json = dict[str, Any]

STATUSES = ("pending", "confirmed", "rejected", "cancelled", "checked_in", "completed")
ACTIONS = ("confirm", "reject", "cancel", "check-in", "complete", "reschedule")
STATUS_ACTIONS = ("confirm", "reject", "cancel", "check-in", "complete")  # POST /v1/bookings/{id}/<action>

# A notes-only PATCH is no status action; an app may list it among the allowed actions as `update`.
NON_STATUS_ACTIONS = {"update"}


@dataclass(frozen=True)
class Rule:
    """One row of the SPEC's status table: `action` from `sources` to `target` (None: unchanged)."""

    sources: frozenset[str]
    target: str | None
    roles: frozenset[str]


EVERYONE = frozenset({"customer", "owner", "admin"})
STAFF = frozenset({"owner", "admin"})
TABLE: dict[str, Rule] = {
    "confirm": Rule(frozenset({"pending"}), "confirmed", STAFF),
    "reject": Rule(frozenset({"pending"}), "rejected", STAFF),
    "cancel": Rule(frozenset({"pending", "confirmed"}), "cancelled", EVERYONE),
    "reschedule": Rule(frozenset({"pending", "confirmed"}), None, EVERYONE),
    "check-in": Rule(frozenset({"confirmed"}), "checked_in", STAFF),
    "complete": Rule(frozenset({"checked_in"}), "completed", STAFF),
}

# How a new (pending) booking reaches each status: (action, role) steps.
ROUTE: dict[str, tuple[tuple[str, str], ...]] = {
    "pending": (),
    "confirmed": (("confirm", "owner"),),
    "rejected": (("reject", "owner"),),
    "cancelled": (("cancel", "customer"),),
    "checked_in": (("confirm", "owner"), ("check-in", "owner")),
    "completed": (("confirm", "owner"), ("check-in", "owner"), ("complete", "owner")),
}

# The state in which each owner-only action would be allowed by status alone.
ENABLING_STATUS = {
    "confirm": "pending", "reject": "pending", "check-in": "confirmed", "complete": "checked_in",
}


def allowed_now(status: str, role: str) -> set[str]:
    """The actions the SPEC lets `role` take on a booking in `status`."""
    return {action for action, rule in TABLE.items() if status in rule.sources and role in rule.roles}


ALLOWED_CASES = [
    (status, action, role)
    for action, rule in TABLE.items()
    for status in STATUSES if status in rule.sources
    for role in sorted(rule.roles)
]
DISALLOWED_CASES = [
    (status, action, role)
    for status in STATUSES
    for action in ACTIONS if status not in TABLE[action].sources
    for role in sorted(TABLE[action].roles)
]


def case_id(status: str, action: str, role: str) -> str:
    return f"{action}-from-{status}-by-{role}"


def actor(cast: Cast, role: str) -> Actor:
    """The cast member playing `role` (customer, owner, admin, other_customer, other_provider)."""
    found: Actor = getattr(cast, role)
    return found


def same_times(booking: Json, starts_at: str, ends_at: str) -> bool:
    """The booking covers exactly `[starts_at, ends_at)` (compared as instants, not strings)."""
    got = (datetime.fromisoformat(booking["starts_at"]), datetime.fromisoformat(booking["ends_at"]))
    return got == (datetime.fromisoformat(starts_at), datetime.fromisoformat(ends_at))


@dataclass
class Story:
    """A booking driven through the API, and the history entries it should have so far."""

    cast: Cast
    resource: Json
    booking: Json
    history: list[Json] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.booking["id"])

    def reload(self, by: Actor | None = None) -> Json:
        answer = (by or self.cast.owner).http.get(f"/v1/bookings/{self.id}")
        assert answer.status_code == 200, answer.text
        body: Json = answer.json()
        return body


def history_entry(action: str, by: Actor | None, from_status: str | None, to_status: str,
                  reason: str | None) -> Json:
    return {"action": action, "actor_id": by.id if by else None, "from_status": from_status,
            "to_status": to_status, "reason": reason}


def new_slot() -> tuple[str, str]:
    """A reschedule target that differs from the default slot of `make_booking`."""
    return at(72), at(74)


def take(by: Actor, booking_id: str, action: str, reason: str | None = None,
         slot: tuple[str, str] | None = None) -> httpx.Response:
    """Take `action` on a booking: a POST for status actions, a times-only PATCH for reschedule."""
    if action == "reschedule":
        starts_at, ends_at = slot or new_slot()
        return by.http.patch(f"/v1/bookings/{booking_id}", json={"starts_at": starts_at, "ends_at": ends_at})
    body = {"reason": reason} if reason is not None else {}
    return by.http.post(f"/v1/bookings/{booking_id}/{action}", json=body)


def booking_in(cast: Cast, status: str, **resource_fields: Any) -> Story:
    """A fresh resource with one booking by `cast.customer`, driven into `status` through the API."""
    resource = make_resource(cast.owner, **resource_fields)
    booking = make_booking(cast.customer, resource["id"])
    created = history_entry("create", cast.customer, None, booking["status"], None)
    story = Story(cast, resource, booking, [created])
    for action, role in ROUTE[status]:
        by, reason = actor(cast, role), f"setup: {action}"
        answer = take(by, story.id, action, reason)
        assert answer.status_code == 200, f"{action} by {role}: {answer.status_code} {answer.text}"
        body: Json = answer.json()
        story.history.append(history_entry(action, by, story.booking["status"], body["status"], reason))
        story.booking = body
    assert story.booking["status"] == status
    return story


def history_of(story: Story, by: Actor | None = None) -> list[Json]:
    answer = (by or story.cast.owner).http.get(f"/v1/bookings/{story.id}/history")
    assert answer.status_code == 200, answer.text
    entries: list[Json] = answer.json()["items"]
    for entry in entries:
        assert {"id", "action", "actor_id", "from_status", "to_status", "reason", "at"} <= entry.keys(), entry
    return entries


def essentials(entries: list[Json]) -> list[Json]:
    keys = ("action", "actor_id", "from_status", "to_status", "reason")
    return [{key: entry[key] for key in keys} for entry in entries]


# 1. Every allowed transition, for every role that may take it.

@pytest.mark.parametrize(("status", "action", "role"), ALLOWED_CASES,
                         ids=[case_id(*case) for case in ALLOWED_CASES])
def test_allowed_transition(cast: Cast, status: str, action: str, role: str) -> None:
    story = booking_in(cast, status)
    by, before = actor(cast, role), story.booking
    reason = None if action == "reschedule" else f"{role} says {action}, ok?\nsecond line"
    slot = new_slot()

    answer = take(by, story.id, action, reason, slot)

    assert answer.status_code == 200, answer.text
    after: Json = answer.json()
    expected_status = TABLE[action].target or status
    assert after["status"] == expected_status
    assert after["version"] == before["version"] + 1
    if action == "reschedule":
        starts_at, ends_at = slot
        assert same_times(after, starts_at, ends_at), after
    reloaded = story.reload()
    assert (reloaded["status"], reloaded["version"]) == (expected_status, before["version"] + 1)

    entries = history_of(story)
    assert entries[0]["action"] == "create"
    assert essentials(entries) == [*story.history, history_entry(action, by, status, expected_status, reason)]


# 2. Every transition the table does not allow, by a role that may take that action elsewhere.

@pytest.mark.parametrize(("status", "action", "role"), DISALLOWED_CASES,
                         ids=[case_id(*case) for case in DISALLOWED_CASES])
def test_disallowed_transition_is_409_with_allowed_actions(
    cast: Cast, status: str, action: str, role: str,
) -> None:
    story = booking_in(cast, status)

    problem = assert_problem(take(actor(cast, role), story.id, action, "not now"), 409)

    assert problem["current_status"] == status
    listed = problem["allowed_actions"]
    assert isinstance(listed, list) and len(listed) == len(set(listed)), listed
    assert set(listed) - NON_STATUS_ACTIONS == allowed_now(status, role), listed
    reloaded = story.reload()
    assert (reloaded["status"], reloaded["version"]) == (status, story.booking["version"])
    assert essentials(history_of(story)) == story.history


# 3. Roles.

def call(by: Actor, operation: str, booking_id: str) -> httpx.Response:
    if operation == "get":
        return by.http.get(f"/v1/bookings/{booking_id}")
    if operation == "history":
        return by.http.get(f"/v1/bookings/{booking_id}/history")
    if operation == "notes":
        return by.http.patch(f"/v1/bookings/{booking_id}", json={"notes": "mine now"})
    return take(by, booking_id, operation, "intruding")


@pytest.mark.parametrize("operation", ["get", "history", *ACTIONS, "notes"])
@pytest.mark.parametrize("intruder", ["other_customer", "other_provider"])
def test_strangers_get_404(cast: Cast, intruder: str, operation: str) -> None:
    story = booking_in(cast, "pending")

    problem = assert_problem(call(actor(cast, intruder), operation, story.id), 404)

    assert story.id not in problem["detail"] and "pending" not in problem["detail"], problem
    reloaded = story.reload()
    assert (reloaded["status"], reloaded["version"]) == ("pending", 1)


@pytest.mark.parametrize("action", ["confirm", "reject", "check-in", "complete"])
def test_customer_may_not_take_owner_actions(cast: Cast, action: str) -> None:
    status = ENABLING_STATUS[action]
    story = booking_in(cast, status)

    assert_problem(take(cast.customer, story.id, action, "let me"), 403)

    reloaded = story.reload()
    assert (reloaded["status"], reloaded["version"]) == (status, story.booking["version"])
    assert story.reload(by=cast.customer)["status"] == status  # the customer does see it


@pytest.mark.parametrize("role", ["owner", "other_provider"])
def test_provider_may_not_create_a_booking(cast: Cast, role: str) -> None:
    resource = make_resource(cast.owner)
    body = {"resource_id": resource["id"], "starts_at": at(24), "ends_at": at(25)}

    provider = actor(cast, role)
    assert_problem(provider.http.post("/v1/bookings", json=body), 403)
    assert_problem(provider.http.post("/v1/bookings", json={**body, "customer_id": cast.customer.id}), 403)

    listed = cast.owner.http.get("/v1/bookings", params={"resource_id": resource["id"]})
    assert listed.status_code == 200 and listed.json()["items"] == [], listed.text


def test_admin_must_name_the_customer(cast: Cast) -> None:
    resource = make_resource(cast.owner)
    body = {"resource_id": resource["id"], "starts_at": at(24), "ends_at": at(25)}

    problem = assert_problem(cast.admin.http.post("/v1/bookings", json=body), 422)

    assert "customer_id" in [error["field"] for error in problem["errors"]], problem


def test_admin_books_for_a_customer(cast: Cast) -> None:
    resource = make_resource(cast.owner)

    booking = make_booking(cast.admin, resource["id"], customer_id=cast.customer.id)

    assert booking["status"] == "pending" and booking["version"] == 1
    assert (booking["customer_id"], booking["owner_id"]) == (cast.customer.id, cast.owner.id)
    seen = cast.customer.http.get(f"/v1/bookings/{booking['id']}")
    assert seen.status_code == 200 and seen.json()["customer_id"] == cast.customer.id, seen.text
    entries = cast.customer.http.get(f"/v1/bookings/{booking['id']}/history").json()["items"]
    assert essentials(entries) == [history_entry("create", cast.admin, None, "pending", None)]


@pytest.mark.parametrize("creator", ["customer", "admin"])
def test_resource_without_confirmation_confirms_at_once(cast: Cast, creator: str) -> None:
    resource = make_resource(cast.owner, requires_confirmation=False)
    extra: Json = {"customer_id": cast.customer.id} if creator == "admin" else {}

    booking = make_booking(actor(cast, creator), resource["id"], **extra)

    assert booking["status"] == "confirmed" and booking["version"] == 1
    entries = cast.owner.http.get(f"/v1/bookings/{booking['id']}/history").json()["items"]
    assert essentials(entries) == [history_entry("create", actor(cast, creator), None, "confirmed", None)]


# 4. A rejected or cancelled booking frees its seat.

RELEASES = [
    ("pending", "reject", "owner"), ("pending", "cancel", "customer"), ("confirmed", "cancel", "owner"),
]


@pytest.mark.parametrize(("status", "action", "role"), RELEASES, ids=[case_id(*case) for case in RELEASES])
def test_released_seat_can_be_booked_again(cast: Cast, status: str, action: str, role: str) -> None:
    resource = make_resource(cast.owner, capacity=1)
    starts_at, ends_at = at(30), at(32)
    first = make_booking(cast.customer, resource["id"], starts_at=starts_at, ends_at=ends_at)
    if status == "confirmed":
        assert take(cast.owner, first["id"], "confirm").status_code == 200
    same_slot = {"resource_id": resource["id"], "starts_at": starts_at, "ends_at": ends_at}
    assert_problem(cast.other_customer.http.post("/v1/bookings", json=same_slot), 409)

    released = take(actor(cast, role), first["id"], action, "plans changed")
    assert released.status_code == 200, released.text

    second = make_booking(cast.other_customer, resource["id"], starts_at=starts_at, ends_at=ends_at)
    assert second["status"] == "pending"
    assert same_times(second, starts_at, ends_at), second
