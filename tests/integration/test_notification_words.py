"""In-app notifications are worded for their reader (issue 7 item 15): a booking is the customer's,
so the customer reads "Your booking of …" and the owner reads who did what on their resource."""

from __future__ import annotations

from typing import Any

from conftest import Actor, Cast, at, make_booking, make_resource


def notice(actor: Actor, booking_id: str, kind: str) -> dict[str, Any]:
    answer = actor.http.get("/v1/notifications", params={"limit": 200})
    assert answer.status_code == 200, answer.text
    found = [n for n in answer.json()["items"] if n["type"] == kind and booking_id in n["body"]]
    assert len(found) == 1, (kind, found)
    return found[0]


def nothing(actor: Actor, booking_id: str, kind: str) -> bool:
    answer = actor.http.get("/v1/notifications", params={"limit": 200})
    return not [n for n in answer.json()["items"] if n["type"] == kind and booking_id in n["body"]]


def test_the_owner_reads_who_requested_and_who_cancelled(cast: Cast) -> None:
    room = make_resource(cast.owner, name="Room Words")
    booking = make_booking(cast.customer, room["id"], start_hours=200)
    created = notice(cast.owner, booking["id"], "booking.created")
    assert created["title"] == "New booking request", created
    assert created["body"].startswith("Carol Customer requested Room Words on "), created
    assert "confirm" in created["body"] and "Your booking" not in created["body"], created
    assert nothing(cast.customer, booking["id"], "booking.created"), "the customer was told of their own action"

    answer = cast.customer.http.post(f"/v1/bookings/{booking['id']}/cancel", json={})
    assert answer.status_code == 200, answer.text
    cancelled = notice(cast.owner, booking["id"], "booking.cancelled")
    assert cancelled["body"].startswith("Carol Customer's booking of Room Words on "), cancelled
    assert "cancelled by the customer." in cancelled["body"], cancelled


def test_a_booking_confirmed_at_once_asks_nothing_of_the_owner(cast: Cast) -> None:
    room = make_resource(cast.owner, name="Instant Words", requires_confirmation=False)
    booking = make_booking(cast.customer, room["id"], start_hours=202)
    created = notice(cast.owner, booking["id"], "booking.created")
    assert created["title"] == "New booking" and "request" not in created["body"].lower(), created
    assert created["body"].startswith("Carol Customer booked Instant Words on "), created


def test_the_customer_reads_about_their_own_booking(cast: Cast) -> None:
    room = make_resource(cast.owner, name="Room Answers")
    booking = make_booking(cast.customer, room["id"], start_hours=204)
    answer = cast.owner.http.post(f"/v1/bookings/{booking['id']}/confirm", json={})
    assert answer.status_code == 200, answer.text
    confirmed = notice(cast.customer, booking["id"], "booking.confirmed")
    assert confirmed["body"].startswith("Your booking of Room Answers on "), confirmed
    assert "was confirmed." in confirmed["body"], confirmed
    moved = cast.owner.http.patch(f"/v1/bookings/{booking['id']}", json={"starts_at": at(206), "ends_at": at(207)})
    assert moved.status_code == 200, moved.text
    rescheduled = notice(cast.customer, booking["id"], "booking.rescheduled")
    assert rescheduled["body"].startswith("Your booking was moved to Room Answers on "), rescheduled
    assert "by the provider." in rescheduled["body"], rescheduled
