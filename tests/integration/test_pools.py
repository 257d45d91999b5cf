"""Pools over HTTP (SPEC "Pools: requests that move on when unanswered"), on SQLite and PostgreSQL:
admins manage pools, providers put their own resources in, a pooled request lands on the resource
with room offered a request least recently, and a rejection moves it on — one change that everyone
concerned hears of over the long-poll — until no resource is left. Moves after a response deadline,
with real workers, are in test_pool_deadlines.py; the 40-request race in test_capacity_races.py."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from conftest import Actor, Cast, Server, assert_problem, at, make_resource, register
from events import events_since, ok, poll_cursor

POOL_FIELDS = {"id", "name", "description", "active", "created_at", "updated_at"}


def make_pool(admin: Actor, **fields: Any) -> dict[str, Any]:
    return ok(admin.http.post("/v1/pools", json={"name": f"Therapists {uuid.uuid4().hex[:6]}", **fields}), 201)


def join(owner: Actor, pool_id: str | None, **fields: Any) -> dict[str, Any]:
    """A new capacity-1 resource of `owner` in the pool."""
    return make_resource(owner, name=f"Room {uuid.uuid4().hex[:6]}", pool_id=pool_id, **fields)


def book_pool(customer: Actor, pool_id: str, start_hours: float, **fields: Any) -> Any:
    return customer.http.post("/v1/bookings", json={"pool_id": pool_id, "starts_at": at(start_hours),
                                                    "ends_at": at(start_hours + 1), **fields})


def test_admins_manage_pools_and_everyone_reads_the_active_ones(cast: Cast) -> None:
    pool = make_pool(cast.admin, description="Short-notice sessions")
    assert set(pool) == POOL_FIELDS and pool["active"] is True, pool
    for outsider in (cast.customer, cast.owner):
        assert_problem(outsider.http.post("/v1/pools", json={"name": "Mine"}), 403)
        assert_problem(outsider.http.patch(f"/v1/pools/{pool['id']}", json={"name": "Mine"}), 403)
        assert_problem(outsider.http.delete(f"/v1/pools/{pool['id']}"), 403)
        assert ok(outsider.http.get(f"/v1/pools/{pool['id']}")) == pool
    renamed = ok(cast.admin.http.patch(f"/v1/pools/{pool['id']}", json={"name": "City therapists", "active": False}))
    assert renamed["name"] == "City therapists" and renamed["active"] is False
    assert_problem(cast.customer.http.get(f"/v1/pools/{pool['id']}"), 404)
    assert pool["id"] not in {p["id"] for p in ok(cast.customer.http.get("/v1/pools", params={"limit": 200}))["items"]}
    assert pool["id"] in {p["id"] for p in ok(cast.admin.http.get("/v1/pools", params={"limit": 200}))["items"]}
    assert_problem(cast.admin.http.delete(f"/v1/pools/{uuid.uuid4()}"), 404)
    assert cast.admin.http.delete(f"/v1/pools/{pool['id']}").status_code == 204
    assert_problem(cast.admin.http.get(f"/v1/pools/{pool['id']}"), 404)


@pytest.mark.parametrize(("body", "field"), [
    ({"name": ""}, "name"), ({"name": "a\nb"}, "name"), ({"name": "x" * 201}, "name"),
    ({"name": "ok", "owner_id": str(uuid.uuid4())}, "owner_id"), ({"name": "ok", "active": "yes"}, "active"),
])
def test_bad_pools_are_refused(cast: Cast, body: dict[str, Any], field: str) -> None:
    before = ok(cast.admin.http.get("/v1/pools", params={"limit": 200}))["items"]
    assert field in str(assert_problem(cast.admin.http.post("/v1/pools", json=body), 422))
    assert ok(cast.admin.http.get("/v1/pools", params={"limit": 200}))["items"] == before


def test_providers_put_their_own_resources_in_and_a_pool_with_resources_stays(cast: Cast) -> None:
    pool = make_pool(cast.admin)
    resource = join(cast.owner, pool["id"])
    assert resource["pool_id"] == pool["id"]
    theirs = join(cast.other_provider, None)
    assert_problem(cast.owner.http.patch(f"/v1/resources/{theirs['id']}", json={"pool_id": pool["id"]}), 403)
    assert_problem(cast.admin.http.delete(f"/v1/pools/{pool['id']}"), 409)
    for missing in (str(uuid.uuid4()), make_pool(cast.admin, active=False)["id"]):
        problem = assert_problem(cast.other_provider.http.patch(f"/v1/resources/{theirs['id']}",
                                                                json={"pool_id": missing}), 422)
        assert "pool_id" in str(problem)
        assert_problem(cast.owner.http.post("/v1/resources", json={"name": "X", "pool_id": missing}), 422)
    assert ok(cast.admin.http.patch(f"/v1/resources/{theirs['id']}", json={"pool_id": pool["id"]}))["pool_id"] == \
        pool["id"]
    for member in (resource, theirs):
        left = ok(cast.admin.http.patch(f"/v1/resources/{member['id']}", json={"pool_id": None}))
        assert left["pool_id"] is None
    assert cast.admin.http.delete(f"/v1/pools/{pool['id']}").status_code == 204


def test_requests_spread_over_the_pool_least_recently_offered_first(server: Server, cast: Cast) -> None:
    pool = make_pool(cast.admin)
    members = [join(cast.owner, pool["id"], price_cents=1000), join(cast.other_provider, pool["id"], price_cents=2000),
               join(cast.owner, pool["id"], price_cents=3000)]
    landed = [ok(book_pool(cast.customer, pool["id"], 200 + i), 201) for i in range(4)]
    # Never offered yet: each of them once (in id order), before any gets a second request.
    assert [b["resource_id"] for b in landed[:3]] == sorted(m["id"] for m in members), landed
    assert landed[3]["resource_id"] == landed[0]["resource_id"], "the fourth goes to the one offered longest ago"
    for booking in landed:
        member = next(m for m in members if m["id"] == booking["resource_id"])
        assert booking["pool_id"] == pool["id"] and booking["owner_id"] == member["owner_id"]
        assert booking["price_cents"] == member["price_cents"] and booking["status"] == "pending"
    # One interval: three resources, three seats; the fourth request finds no room.
    for _ in range(3):
        ok(book_pool(cast.other_customer, pool["id"], 300), 201)
    assert_problem(book_pool(cast.other_customer, pool["id"], 300), 409)
    window = {"from": at(299), "to": at(302)}
    free = ok(cast.customer.http.get(f"/v1/pools/{pool['id']}/availability", params=window))
    assert free["pool_id"] == pool["id"] and free["capacity"] == 3
    assert [(b["seats_taken"], b["seats_left"]) for b in free["busy"]] == [(3, 0)], free
    assert_problem(book_pool(cast.customer, pool["id"], 300, seats=2), 409)  # no member has 2 seats


@pytest.mark.parametrize(("body", "field"), [
    ({"starts_at": at(50), "ends_at": at(51)}, "resource_id"),
    ({"starts_at": at(50), "ends_at": at(51), "pool_id": "not-a-uuid"}, "pool_id"),
])
def test_a_booking_names_a_resource_or_a_pool(cast: Cast, body: dict[str, Any], field: str) -> None:
    assert field in str(assert_problem(cast.customer.http.post("/v1/bookings", json=body), 422))


def test_a_closed_pool_or_both_targets_are_refused(cast: Cast) -> None:
    pool = make_pool(cast.admin)
    resource = join(cast.owner, pool["id"])
    both = {"pool_id": pool["id"], "resource_id": resource["id"], "starts_at": at(60), "ends_at": at(61)}
    assert "pool_id" in str(assert_problem(cast.customer.http.post("/v1/bookings", json=both), 422))
    ok(cast.admin.http.patch(f"/v1/pools/{pool['id']}", json={"active": False}))
    assert "pool_id" in str(assert_problem(book_pool(cast.customer, pool["id"], 60), 422))
    assert "pool_id" in str(assert_problem(book_pool(cast.customer, str(uuid.uuid4()), 60), 422))
    assert ok(cast.admin.http.get("/v1/bookings", params={"resource_id": resource["id"]}))["items"] == []


def test_a_rejected_request_moves_on_as_one_change_until_none_is_left(server: Server, cast: Cast) -> None:
    pool = make_pool(cast.admin)
    third = register(server, "provider", "Tara Third")
    owners = {cast.owner.id: cast.owner, cast.other_provider.id: cast.other_provider, third.id: third}
    busy = join(third, pool["id"])  # full at that time: never offered the request
    ok(cast.other_customer.http.post("/v1/bookings", json={"resource_id": busy["id"], "starts_at": at(400),
                                                           "ends_at": at(401)}), 201)
    members = {m["id"]: m for m in (join(cast.owner, pool["id"], price_cents=500, currency="EUR"),
                                    join(cast.other_provider, pool["id"], price_cents=700, currency="USD"))}
    booking = ok(book_pool(cast.customer, pool["id"], 400), 201)
    first_owner = owners[booking["owner_id"]]
    ok(first_owner.http.post(f"/v1/bookings/{booking['id']}/messages", json={"body": "Hello from the first"}), 201)
    cursors = {actor.id: poll_cursor(actor) for actor in (cast.customer, *owners.values())}

    moved = ok(first_owner.http.post(f"/v1/bookings/{booking['id']}/reject", json={"reason": "Fully booked"}))
    second = next(m for m in members.values() if m["id"] != booking["resource_id"])
    assert moved["resource_id"] == second["id"] and moved["owner_id"] == second["owner_id"], moved
    assert moved["status"] == "pending" and moved["version"] == booking["version"] + 1
    assert (moved["price_cents"], moved["currency"]) == (second["price_cents"], second["currency"])
    assert moved["pool_id"] == pool["id"]
    second_owner = owners[second["owner_id"]]
    # The previous owner loses access at once; the new one has it.
    for path in ("", "/messages", "/history"):
        assert_problem(first_owner.http.get(f"/v1/bookings/{booking['id']}{path}"), 404)
        ok(second_owner.http.get(f"/v1/bookings/{booking['id']}{path}"))
    assert_problem(first_owner.http.post(f"/v1/bookings/{booking['id']}/messages", json={"body": "still here?"}), 404)
    assert booking["id"] not in {b["id"] for b in ok(first_owner.http.get("/v1/bookings", params={"limit": 200}))[
        "items"]}
    talks = {c["booking_id"] for c in ok(first_owner.http.get("/v1/conversations", params={"limit": 200}))["items"]}
    assert booking["id"] not in talks
    assert booking["id"] in {c["booking_id"] for c in ok(second_owner.http.get("/v1/conversations"))["items"]}
    history = ok(cast.customer.http.get(f"/v1/bookings/{booking['id']}/history"))["items"]
    assert [(h["action"], h["from_status"], h["to_status"], h["actor_id"], h["reason"]) for h in history] == [
        ("create", None, "pending", cast.customer.id, None),
        ("reassign", "pending", "pending", first_owner.id, "Fully booked")], history
    # booking.reassigned to the customer and both owners (once each), nothing to the busy third owner.
    for actor in (cast.customer, first_owner, second_owner):
        events = [e for e in events_since(actor, cursors[actor.id], cast.admin) if e["type"] == "booking.reassigned"]
        assert len(events) == 1, events
        data = events[0]["data"]
        assert data["from_resource_id"] == booking["resource_id"] and data["from_owner_id"] == first_owner.id
        assert {k: data[k] for k in moved} == moved
    assert not [e for e in events_since(third, cursors[third.id], cast.admin) if e["type"] == "booking.reassigned"]
    # Notifications: the customer and the new owner (the previous one acted).
    for actor, expected in ((cast.customer, 1), (second_owner, 1), (first_owner, 0)):
        items = ok(actor.http.get("/v1/notifications", params={"limit": 200}))["items"]
        found = [n for n in items if n["type"] == "booking.reassigned" and n["data"]["id"] == booking["id"]]
        assert len(found) == expected, (actor.role, found)
    # Emails: the customer, the new owner and the previous owner.
    deliveries = ok(cast.admin.http.get("/v1/admin/emails", params={"booking_id": booking["id"], "limit": 200}))
    reassigned = sorted((d["template_key"], d["to_address"]) for d in deliveries["items"]
                        if d["template_key"].startswith("booking.reassigned"))
    assert reassigned == sorted([("booking.reassigned.customer", cast.customer.email),
                                 ("booking.reassigned.owner", first_owner.email),
                                 ("booking.reassigned.owner", second_owner.email)]), reassigned

    # The last resource with room rejects: nothing left, so it ends rejected (and stays where it is).
    done = ok(second_owner.http.post(f"/v1/bookings/{booking['id']}/reject"))
    assert done["status"] == "rejected" and done["resource_id"] == second["id"], done
    actions = [h["action"] for h in ok(cast.customer.http.get(f"/v1/bookings/{booking['id']}/history"))["items"]]
    assert actions == ["create", "reassign", "reject"], actions


def test_an_admin_rejecting_moves_it_on_too_and_confirming_keeps_it(cast: Cast) -> None:
    pool = make_pool(cast.admin)
    for owner in (cast.owner, cast.other_provider):
        join(owner, pool["id"])
    booking = ok(book_pool(cast.customer, pool["id"], 500), 201)
    moved = ok(cast.admin.http.post(f"/v1/bookings/{booking['id']}/reject"))
    assert moved["status"] == "pending" and moved["resource_id"] != booking["resource_id"]
    kept = ok(cast.admin.http.post(f"/v1/bookings/{booking['id']}/confirm"))
    assert kept["status"] == "confirmed" and kept["resource_id"] == moved["resource_id"]
    # A customer cancelling a pooled booking cancels it: only rejection and expiry move it on.
    other = ok(book_pool(cast.customer, pool["id"], 510), 201)
    assert ok(cast.customer.http.post(f"/v1/bookings/{other['id']}/cancel"))["status"] == "cancelled"
