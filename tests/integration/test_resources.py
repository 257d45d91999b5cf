"""Resources: who may create, see, change and delete them; availability."""

from __future__ import annotations

from conftest import Cast, Server, assert_problem, at, make_booking, make_resource


def test_provider_creates_resource_with_defaults(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.owner, name="Quiet room", description="Line one\nline\ttwo")
    assert resource["owner_id"] == cast.owner.id
    assert resource["capacity"] == 1 and resource["requires_confirmation"] is True and resource["active"] is True
    assert resource["timezone"] == "UTC" and resource["response_deadline_seconds"] is None
    assert resource["description"] == "Line one\nline\ttwo"
    assert cast.customer.http.get(f"/v1/resources/{resource['id']}").json() == resource


def test_customer_cannot_create_resource(server: Server, cast: Cast) -> None:
    assert_problem(cast.customer.http.post("/v1/resources", json={"name": "Mine"}), 403)


def test_admin_creates_resource_for_a_provider(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.admin, owner_id=cast.owner.id)
    assert resource["owner_id"] == cast.owner.id
    assert_problem(cast.owner.http.post("/v1/resources", json={"name": "X", "owner_id": cast.other_provider.id}), 403)
    assert_problem(cast.admin.http.post("/v1/resources", json={"name": "X", "owner_id": cast.customer.id}), 422)


def test_only_owner_or_admin_may_change_a_resource(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.owner)
    url = f"/v1/resources/{resource['id']}"
    assert_problem(cast.other_provider.http.patch(url, json={"name": "Stolen"}), 403)
    assert_problem(cast.customer.http.patch(url, json={"name": "Stolen"}), 403)
    assert_problem(cast.customer.http.delete(url), 403)
    changed = cast.owner.http.patch(url, json={"name": "Renamed", "timezone": "Europe/Paris", "price_cents": 1500})
    assert changed.status_code == 200
    assert changed.json()["name"] == "Renamed" and changed.json()["timezone"] == "Europe/Paris"
    assert changed.json()["capacity"] == resource["capacity"]  # untouched fields stay
    assert cast.admin.http.patch(url, json={"capacity": 4}).json()["capacity"] == 4


def test_inactive_resource_is_hidden_from_others_and_not_bookable(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.owner, active=False)
    url = f"/v1/resources/{resource['id']}"
    assert_problem(cast.customer.http.get(url), 404)
    assert_problem(cast.other_provider.http.get(url), 404)
    assert cast.owner.http.get(url).status_code == 200 and cast.admin.http.get(url).status_code == 200
    ids = {r["id"] for r in cast.customer.http.get("/v1/resources", params={"limit": 200}).json()["items"]}
    assert resource["id"] not in ids
    answer = cast.customer.http.post("/v1/bookings", json={
        "resource_id": resource["id"], "starts_at": at(5), "ends_at": at(6)})
    assert assert_problem(answer, 422)["errors"][0]["field"] == "resource_id"


def test_delete_with_future_bookings_is_409_then_allowed(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.owner)
    booking = make_booking(cast.customer, resource["id"])
    url = f"/v1/resources/{resource['id']}"
    assert_problem(cast.owner.http.delete(url), 409)
    assert cast.customer.http.post(f"/v1/bookings/{booking['id']}/cancel").status_code == 200
    assert cast.owner.http.delete(url).status_code == 204
    assert_problem(cast.owner.http.get(url), 404)
    # the booking keeps its history after its resource is gone
    assert cast.customer.http.get(f"/v1/bookings/{booking['id']}").status_code == 200


def test_capacity_cannot_drop_below_booked_seats(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.owner, capacity=3)
    make_booking(cast.customer, resource["id"], seats=2)
    url = f"/v1/resources/{resource['id']}"
    assert_problem(cast.owner.http.patch(url, json={"capacity": 1}), 409)
    assert cast.owner.http.patch(url, json={"capacity": 2}).status_code == 200


def test_availability_reports_maximal_constant_intervals(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.owner, capacity=3)
    make_booking(cast.customer, resource["id"], start_hours=10, length_hours=2, seats=1)  # 10-12
    make_booking(cast.customer, resource["id"], start_hours=11, length_hours=2, seats=2)  # 11-13
    make_booking(cast.customer, resource["id"], start_hours=13, length_hours=1, seats=2)  # 13-14, same count
    cancelled = make_booking(cast.customer, resource["id"], start_hours=15, length_hours=1)
    cast.customer.http.post(f"/v1/bookings/{cancelled['id']}/cancel")
    answer = cast.other_customer.http.get(f"/v1/resources/{resource['id']}/availability",
                                          params={"from": at(9), "to": at(20)})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["resource_id"] == resource["id"] and body["capacity"] == 3
    got = [(b["seats_taken"], b["seats_left"]) for b in body["busy"]]
    assert got == [(1, 2), (3, 0), (2, 1)]
    assert body["busy"][2]["starts_at"] == at(12).replace("+00:00", "Z")
    assert body["busy"][2]["ends_at"] == at(14).replace("+00:00", "Z")


def test_back_to_back_bookings_do_not_overlap(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.owner, capacity=1)
    make_booking(cast.customer, resource["id"], start_hours=20, length_hours=1)
    make_booking(cast.other_customer, resource["id"], start_hours=21, length_hours=1)
    clash = cast.other_customer.http.post("/v1/bookings", json={
        "resource_id": resource["id"], "starts_at": at(20, 30), "ends_at": at(21, 30)})
    assert_problem(clash, 409)


def test_resource_list_pages_without_gaps_or_repeats(server: Server, cast: Cast) -> None:
    mine = {make_resource(cast.other_provider, name=f"R{i}")["id"] for i in range(5)}
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, "owner_id": cast.other_provider.id, **({"cursor": cursor} if cursor else {})}
        page = cast.customer.http.get("/v1/resources", params=params).json()
        seen += [r["id"] for r in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) and mine <= set(seen)


def test_cannot_reschedule_onto_an_inactive_resource(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.owner)
    booking = make_booking(cast.customer, resource["id"], start_hours=30)
    assert cast.owner.http.patch(f"/v1/resources/{resource['id']}", json={"active": False}).status_code == 200
    moved = cast.customer.http.patch(f"/v1/bookings/{booking['id']}", json={"starts_at": at(40), "ends_at": at(41)})
    assert assert_problem(moved, 422)["errors"][0]["field"] == "resource_id"


def test_empty_patches_and_control_characters_in_filters_are_422(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.owner)
    assert_problem(cast.owner.http.patch(f"/v1/resources/{resource['id']}", json={}), 422)
    assert_problem(cast.admin.http.patch(f"/v1/users/{cast.customer.id}", json={}), 422)
    assert_problem(cast.customer.http.get("/v1/resources", params={"kind": "a\x00b"}), 422)


def test_strangers_get_401_before_any_validation(server: Server) -> None:
    with server.client() as client:
        assert_problem(client.post("/v1/bookings", json={}), 401)
        assert_problem(client.post("/v1/resources", content=b"{not json"), 401)
