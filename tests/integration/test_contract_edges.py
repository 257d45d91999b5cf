"""Input at the edges of the contract: deep JSON, cursors at the calendar's edge, far-future
bookings, trailing newlines that `$` lets through, and the paginated history and reminders.

Every refusal is a 4xx problem document, never a 500; each test drives the API over HTTP the way
a careless or hostile client would.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import Actor, Cast, assert_problem, make_booking, make_resource

JSON = {"Content-Type": "application/json"}


def cursor_of(created_at: str, row_id: str) -> str:
    """A cursor in the API's own format (base64url of `[time, id]`) naming any position."""
    return base64.urlsafe_b64encode(json.dumps([created_at, row_id]).encode()).decode().rstrip("=")


EDGE_TIMES = [
    "9999-12-31T23:59:59.999999-14:00",  # after year 9999 in UTC
    "0001-01-01T00:00:00+14:00",  # before year 1 in UTC
    "9999-12-31T23:59:59.999999-00:01",
    "0001-01-01T00:00:00+23:59",
]


def list_paths(cast: Cast, booking_id: str) -> list[tuple[Actor, str]]:
    return [
        (cast.customer, "/v1/bookings"), (cast.customer, "/v1/resources"), (cast.customer, "/v1/notifications"),
        (cast.admin, "/v1/users"), (cast.admin, "/v1/admin/emails"),
        (cast.customer, f"/v1/bookings/{booking_id}/history"), (cast.customer, f"/v1/bookings/{booking_id}/reminders"),
    ]


def test_deeply_nested_json_is_400(cast: Cast) -> None:
    deep_array = b"[" * 10_000 + b"]" * 10_000
    assert_problem(cast.customer.http.post("/v1/bookings", content=deep_array, headers=JSON), 400)
    deep_object = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
    assert_problem(cast.owner.http.post("/v1/resources", content=deep_object, headers=JSON), 400)
    # Inside a field that takes any JSON, at every depth around the decoder's own limit.
    for depth in (65, 500, 960, 970, 972, 975, 1_000, 5_000):
        data = b'{"a":' * depth + b"1" + b"}" * depth
        body = b'{"type": "edge.deep", "channels": ["broadcast"], "data": ' + data + b"}"
        problem = assert_problem(cast.admin.http.post("/v1/events", content=body, headers=JSON), 400)
        assert "deep" in problem["detail"], problem


def test_moderately_nested_json_is_accepted(cast: Cast) -> None:
    data = {"a": [{"b": [1, 2, {"c": "[[[[{{{{ brackets in strings do not count"}]}]}
    for _ in range(50):
        data = {"n": data}
    answer = cast.admin.http.post("/v1/events", json={"type": "edge.nested", "channels": ["broadcast"], "data": data})
    assert answer.status_code == 202, answer.text


def test_cursor_at_the_edge_of_the_calendar_is_400_on_every_list(cast: Cast) -> None:
    resource = make_resource(cast.owner, requires_confirmation=False)
    booking = make_booking(cast.customer, resource["id"], start_hours=30)
    for actor, path in list_paths(cast, booking["id"]):
        for edge in EDGE_TIMES:
            answer = actor.http.get(path, params={"cursor": cursor_of(edge, str(uuid.uuid4()))})
            problem = assert_problem(answer, 400)
            assert problem["errors"] == [{"field": "cursor", "message": "unreadable cursor"}], (path, problem)
        assert_problem(actor.http.get(path, params={"cursor": "A" * 5_000}), 400)
        # The last representable instants are fine: an empty page, not an error.
        for edge in ("9999-12-31T23:59:59.999999+00:00", "0001-01-01T00:00:00+00:00"):
            answer = actor.http.get(path, params={"cursor": cursor_of(edge, str(uuid.uuid4()))})
            assert answer.status_code == 200, (path, edge, answer.text)


def test_unreadable_poll_cursor_is_400_whatever_its_length(cast: Cast) -> None:
    for cursor in ("1" * 41, "1-" + "9" * 100, "x" * 4_000, "1700000000000-1\n", "-1-0"):
        answer = cast.customer.http.get("/v1/events/poll", params={"cursor": cursor, "timeout": "0"})
        assert assert_problem(answer, 400)["errors"][0]["field"] == "cursor", cursor[:50]


def test_booking_more_than_two_years_ahead_is_422(cast: Cast) -> None:
    resource = make_resource(cast.owner)
    far = datetime.now(UTC) + timedelta(days=731)
    for starts_at in (far, datetime(9999, 12, 30, tzinfo=UTC)):
        answer = cast.customer.http.post("/v1/bookings", json={
            "resource_id": resource["id"], "starts_at": starts_at.isoformat(),
            "ends_at": (starts_at + timedelta(hours=1)).isoformat()})
        assert assert_problem(answer, 422)["errors"][0]["field"] == "starts_at"
    booking = make_booking(cast.customer, resource["id"], start_hours=24 * 700)  # inside the limit
    moved = cast.customer.http.patch(f"/v1/bookings/{booking['id']}", json={
        "starts_at": far.isoformat(), "ends_at": (far + timedelta(hours=1)).isoformat()})
    assert assert_problem(moved, 422)["errors"][0]["field"] == "starts_at"
    assert cast.customer.http.get(f"/v1/bookings/{booking['id']}").json()["version"] == 1


@pytest.mark.parametrize("edge", ["9999-12-31T23:00:00-14:00", "0001-01-01T00:00:00+14:00"])
def test_availability_and_list_filters_at_the_calendar_edge_are_422(cast: Cast, edge: str) -> None:
    resource = make_resource(cast.owner)
    answer = cast.customer.http.get(f"/v1/resources/{resource['id']}/availability",
                                    params={"from": edge, "to": "9999-12-31T23:59:00Z"})
    assert assert_problem(answer, 422)["errors"][0]["field"] == "from"
    for name in ("from", "to"):
        assert assert_problem(cast.customer.http.get("/v1/bookings", params={name: edge}), 422)["errors"][0][
            "field"] == name


def test_event_type_with_a_trailing_newline_is_422(cast: Cast) -> None:
    answer = cast.admin.http.post("/v1/events", json={"type": "foo.bar\n", "channels": ["broadcast"]})
    assert assert_problem(answer, 422)["errors"][0]["field"] == "type"


@pytest.mark.parametrize("channel", ["role:customer\n", f"user:{uuid.uuid4()}\n", "resource:x", "broadcast\n"])
def test_channel_with_a_trailing_newline_is_422(cast: Cast, channel: str) -> None:
    answer = cast.admin.http.post("/v1/events", json={"type": "foo.bar", "channels": ["broadcast", channel]})
    assert assert_problem(answer, 422)["errors"][0]["field"] == "channels.1"


def test_dedup_key_with_a_trailing_newline_is_422(cast: Cast) -> None:
    answer = cast.admin.http.post("/v1/events", json={"type": "foo.bar", "channels": ["broadcast"],
                                                      "dedup_key": "key\n"})
    assert assert_problem(answer, 422)["errors"][0]["field"] == "dedup_key"


@pytest.mark.parametrize("field,value", [("name", "Room\n"), ("kind", "room\n"), ("currency", "EUR\n")])
def test_resource_fields_with_a_trailing_newline_are_422(cast: Cast, field: str, value: str) -> None:
    answer = cast.owner.http.post("/v1/resources", json={"name": "Room", field: value})
    assert assert_problem(answer, 422)["errors"][0]["field"] == field


def test_kind_filter_with_a_trailing_newline_is_422(cast: Cast) -> None:
    answer = cast.customer.http.get("/v1/resources", params={"kind": "room\n"})
    assert assert_problem(answer, 422)["errors"][0]["field"] == "kind"


def test_topic_with_a_newline_inside_is_refused(cast: Cast) -> None:
    resource = make_resource(cast.owner)
    for topics in (f"resource:{resource['id']}\nx", "role:admin\n", f"user:{cast.owner.id}\n"):
        answer = cast.customer.http.get("/v1/events/poll", params={"topics": topics, "timeout": "0"})
        assert_problem(answer, 403)


def pages(actor: Actor, path: str, limit: int) -> list[list[dict[str, Any]]]:
    """Every page of a list, following `next_cursor`."""
    found, cursor = [], None
    while True:
        answer = actor.http.get(path, params={"limit": str(limit), **({"cursor": cursor} if cursor else {})})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body) == {"items", "next_cursor"}, body
        found.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return found


def test_history_is_paginated_oldest_first(cast: Cast) -> None:
    resource = make_resource(cast.owner)
    booking = make_booking(cast.customer, resource["id"], start_hours=40)
    for notes in ("first", "second"):
        assert cast.customer.http.patch(f"/v1/bookings/{booking['id']}", json={"notes": notes}).status_code == 200
    assert cast.owner.http.post(f"/v1/bookings/{booking['id']}/confirm").status_code == 200
    found = pages(cast.customer, f"/v1/bookings/{booking['id']}/history", limit=1)
    assert [len(page) for page in found] == [1, 1, 1, 1]
    entries = [entry for page in found for entry in page]
    assert [e["action"] for e in entries] == ["create", "update", "update", "confirm"]
    assert [e["at"] for e in entries] == sorted(e["at"] for e in entries)
    whole = cast.owner.http.get(f"/v1/bookings/{booking['id']}/history").json()
    assert whole["items"] == entries and whole["next_cursor"] is None


def test_reminders_are_paginated_soonest_first(cast: Cast) -> None:
    resource = make_resource(cast.owner, requires_confirmation=False)
    booking = make_booking(cast.customer, resource["id"], start_hours=50)
    found = pages(cast.owner, f"/v1/bookings/{booking['id']}/reminders", limit=2)
    reminders = [r for page in found for r in page]
    assert len(reminders) == 6 and all(len(page) <= 2 for page in found), found  # 5 for the owner, 1 customer
    assert len({r["id"] for r in reminders}) == 6
    due = [datetime.fromisoformat(r["due_at"]) for r in reminders]
    assert due == sorted(due)
    answer = cast.customer.http.get(f"/v1/bookings/{booking['id']}/reminders", params={"limit": "0"})
    assert assert_problem(answer, 422)["errors"][0]["field"] == "limit"


def test_a_stranger_gets_404_for_history_and_reminders_pages(cast: Cast) -> None:
    resource = make_resource(cast.owner)
    booking = make_booking(cast.customer, resource["id"], start_hours=60)
    for what in ("history", "reminders"):
        answer = cast.other_customer.http.get(f"/v1/bookings/{booking['id']}/{what}", params={"limit": "1"})
        assert_problem(answer, 404)
