"""Conversations over HTTP (SPEC "Conversations"), on SQLite and PostgreSQL: who may see and post,
message limits, newest-first pages, search, `client_id` resends, receipts and their ticks, the
caller's conversations and unread counts. Live delivery is in test_conversations_live.py."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Actor, Cast, assert_problem, make_booking, make_resource
from events import ok


def booking_of(cast: Cast) -> dict[str, Any]:
    """A new booking of the cast's customer on a new resource of its owner."""
    resource = make_resource(cast.owner, name="Talk Room")
    return make_booking(cast.customer, resource["id"])


def post(actor: Actor, booking_id: str, body: str, **fields: Any) -> Any:
    return actor.http.post(f"/v1/bookings/{booking_id}/messages", json={"body": body, **fields})


def send(actor: Actor, booking_id: str, body: str, **fields: Any) -> dict[str, Any]:
    return ok(post(actor, booking_id, body, **fields), 201)


def messages(actor: Actor, booking_id: str, **params: Any) -> dict[str, Any]:
    return ok(actor.http.get(f"/v1/bookings/{booking_id}/messages", params=params))


def receipt(actor: Actor, booking_id: str, **body: str) -> Any:
    return actor.http.post(f"/v1/bookings/{booking_id}/messages/receipts", json=body)


def unread(actor: Actor) -> int:
    count: int = ok(actor.http.get("/v1/conversations/unread-count"))["unread"]
    return count


def test_only_participants_and_admins_see_or_post(cast: Cast) -> None:
    booking = booking_of(cast)
    bid = booking["id"]
    for outsider in (cast.other_customer, cast.other_provider):
        assert_problem(post(outsider, bid, "hello"), 404)
        assert_problem(outsider.http.get(f"/v1/bookings/{bid}/messages"), 404)
        assert_problem(outsider.http.post(f"/v1/bookings/{bid}/typing"), 404)
        assert_problem(receipt(outsider, bid, read_up_to=bid), 404)
    first = send(cast.customer, bid, "Is there a whiteboard?")
    second = send(cast.owner, bid, "Yes, and markers.")
    support = send(cast.admin, bid, "Support here: all good?")
    assert [m["sender_id"] for m in (first, second, support)] == [cast.customer.id, cast.owner.id, cast.admin.id]
    for reader in (cast.customer, cast.owner, cast.admin):
        assert [m["id"] for m in messages(reader, bid)["items"]] == [support["id"], second["id"], first["id"]]
    assert set(first) == {"id", "booking_id", "sender_id", "body", "client_id", "created_at", "delivered_at",
                          "read_at"}
    for outsider in (cast.other_customer, cast.other_provider):
        assert_problem(outsider.http.get(f"/v1/bookings/{bid}/messages"), 404)
    assert_problem(cast.customer.http.get("/v1/bookings/00000000-0000-4000-8000-000000000000/messages"), 404)


@pytest.mark.parametrize(("fields", "field"), [
    ({"body": ""}, "body"), ({"body": "x" * 4001}, "body"), ({"body": "bell \x07"}, "body"),
    ({"body": "escape \x1b[31m"}, "body"), ({"body": "ok", "client_id": "x" * 65}, "client_id"),
    ({"body": "ok", "client_id": ""}, "client_id"), ({"body": "ok", "client_id": "tab\there"}, "client_id"),
    ({"body": "ok", "extra": 1}, "extra"), ({}, "body"),
])
def test_bad_messages_are_refused_and_change_nothing(cast: Cast, fields: dict[str, Any], field: str) -> None:
    bid = booking_of(cast)["id"]
    problem = assert_problem(cast.customer.http.post(f"/v1/bookings/{bid}/messages", json=fields), 422)
    assert field in str(problem), problem
    assert messages(cast.customer, bid)["items"] == []


def test_free_text_keeps_newlines_and_tabs_and_4000_characters(cast: Cast) -> None:
    bid = booking_of(cast)["id"]
    body = "line one\n\tline two " + "é" * 3980
    assert len(body) <= 4000
    assert send(cast.customer, bid, body)["body"] == body


def test_newest_first_pages_and_search_ignoring_case(cast: Cast) -> None:
    bid = booking_of(cast)["id"]
    bodies = ["Hello there", "Do you have PARKING?", "Ärger mit dem Schlüssel", "100% sure_thing", "parking is free"]
    sent = [send(cast.customer if i % 2 == 0 else cast.owner, bid, body) for i, body in enumerate(bodies)]
    seen: list[str] = []
    cursor = None
    while True:
        page = messages(cast.customer, bid, limit=2, **({"cursor": cursor} if cursor else {}))
        seen += [m["id"] for m in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [m["id"] for m in reversed(sent)]

    def found(q: str) -> list[str]:
        return [m["body"] for m in messages(cast.owner, bid, q=q)["items"]]

    assert found("parking") == ["parking is free", "Do you have PARKING?"]
    assert found("ärger") == ["Ärger mit dem Schlüssel"]  # not only ASCII
    assert found("100%") == ["100% sure_thing"] and found("%") == ["100% sure_thing"]  # % and _ are literal
    assert found("do_you") == [] and found("nothing like it") == []  # "_" would match the space of "Do you"
    assert_problem(cast.owner.http.get(f"/v1/bookings/{bid}/messages", params={"q": "a\x07b"}), 422)
    assert_problem(cast.owner.http.get(f"/v1/bookings/{bid}/messages", params={"cursor": "garbage!"}), 400)


def test_a_blind_resend_with_the_same_client_id_creates_nothing(cast: Cast) -> None:
    bid = booking_of(cast)["id"]
    first = post(cast.customer, bid, "Running late", client_id="offline-42")
    assert first.status_code == 201, first.text
    again = post(cast.customer, bid, "Running late", client_id="offline-42")
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    other = send(cast.owner, bid, "No problem", client_id="offline-42")  # another sender's ids are their own
    assert other["id"] != first.json()["id"]
    assert len(messages(cast.customer, bid)["items"]) == 2


def test_receipts_move_forward_only_and_tick_the_senders_messages(cast: Cast) -> None:
    bid = booking_of(cast)["id"]
    m1, m2, m3 = (send(cast.customer, bid, f"question {n}") for n in (1, 2, 3))
    assert unread(cast.owner) >= 3
    assert receipt(cast.owner, bid, delivered_up_to=m2["id"]).status_code == 204
    view = {m["id"]: m for m in messages(cast.customer, bid)["items"]}
    assert view[m1["id"]]["delivered_at"] and view[m2["id"]]["delivered_at"] and not view[m3["id"]]["delivered_at"]
    assert not any(m["read_at"] for m in view.values())
    assert receipt(cast.owner, bid, read_up_to=m3["id"]).status_code == 204  # reading implies delivery
    view = {m["id"]: m for m in messages(cast.customer, bid)["items"]}
    assert all(m["delivered_at"] and m["read_at"] for m in view.values()), view
    stamped = view[m1["id"]]["read_at"]
    assert receipt(cast.owner, bid, read_up_to=m1["id"]).status_code == 204  # backwards: nothing moves
    assert messages(cast.customer, bid)["items"][-1]["read_at"] == stamped
    # The owner's own view: the customer has not received the owner's reply yet.
    reply = send(cast.owner, bid, "answered")
    assert ok(cast.owner.http.get(f"/v1/bookings/{bid}/messages"))["items"][0] == reply
    assert reply["delivered_at"] is None and reply["read_at"] is None
    assert_problem(receipt(cast.owner, bid), 422)
    assert_problem(receipt(cast.owner, bid, read_up_to="00000000-0000-4000-8000-000000000000"), 422)
    elsewhere = send(cast.customer, booking_of(cast)["id"], "another booking's message")
    assert "read_up_to" in str(assert_problem(receipt(cast.owner, bid, read_up_to=elsewhere["id"]), 422))


def test_an_admins_message_is_delivered_once_both_participants_have_it(cast: Cast) -> None:
    bid = booking_of(cast)["id"]
    note = send(cast.admin, bid, "Support: the room moved to floor 2")
    assert receipt(cast.customer, bid, read_up_to=note["id"]).status_code == 204
    assert messages(cast.admin, bid)["items"][0]["read_at"] is None  # the owner has not read it yet
    assert receipt(cast.owner, bid, read_up_to=note["id"]).status_code == 204
    stamped = messages(cast.admin, bid)["items"][0]
    assert stamped["delivered_at"] and stamped["read_at"]


def test_the_callers_conversations_and_unread_counts(cast: Cast) -> None:
    quiet = booking_of(cast)  # no message: not listed
    first, second = booking_of(cast), booking_of(cast)
    send(cast.customer, first["id"], "first conversation")
    latest = send(cast.owner, second["id"], "second conversation, newer")
    before = unread(cast.customer)
    send(cast.owner, second["id"], "and another")
    assert unread(cast.customer) == before + 1
    page = ok(cast.customer.http.get("/v1/conversations", params={"limit": 200}))
    ids = [c["booking_id"] for c in page["items"]]
    assert quiet["id"] not in ids and ids.index(second["id"]) < ids.index(first["id"])  # newest activity first
    row = page["items"][ids.index(second["id"])]
    assert row["resource_id"] == second["resource_id"] and row["unread"] == 2
    assert row["last_message"]["body"] == "and another" and row["last_message"]["id"] != latest["id"]
    people = {p["user_id"]: p for p in row["participants"]}
    assert set(people) == {cast.customer.id, cast.owner.id}
    assert people[cast.owner.id]["name"] == "Paula Provider" and people[cast.owner.id]["role"] == "provider"
    assert all(set(p) == {"user_id", "name", "role", "online", "last_seen_at"} for p in people.values())
    newest = row["last_message"]["id"]
    assert receipt(cast.customer, second["id"], read_up_to=newest).status_code == 204
    assert unread(cast.customer) == before - 1  # this conversation's own unread are gone
    mine = {c["booking_id"] for c in ok(cast.owner.http.get("/v1/conversations", params={"limit": 200}))["items"]}
    assert {first["id"], second["id"]} <= mine
    theirs = ok(cast.other_customer.http.get("/v1/conversations"))["items"]
    assert not {c["booking_id"] for c in theirs} & {first["id"], second["id"]}
    assert ok(cast.owner.http.get("/v1/conversations", params={"limit": 1}))["next_cursor"]
