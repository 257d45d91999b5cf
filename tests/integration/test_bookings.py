"""Bookings: creation, visibility, listing filters, pagination and `Idempotency-Key`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import httpx
from conftest import Cast, Server, assert_problem, at, make_booking, make_resource


def test_booking_object_has_the_documented_fields(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.owner, price_cents=1250, currency="USD", capacity=4)
    booking = make_booking(cast.customer, resource["id"], seats=2, notes="Window seat,\nplease")
    assert set(booking) == {"id", "resource_id", "customer_id", "owner_id", "starts_at", "ends_at", "seats",
                            "notes", "status", "price_cents", "currency", "version", "pool_id", "offered_at",
                            "created_at", "updated_at"}
    assert booking["customer_id"] == cast.customer.id and booking["owner_id"] == cast.owner.id
    assert booking["status"] == "pending" and booking["version"] == 1
    assert booking["price_cents"] == 2500 and booking["currency"] == "USD"
    assert booking["notes"] == "Window seat,\nplease"


def test_times_are_stored_in_utc_whatever_offset_is_sent(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.owner)
    day = (datetime.now(UTC) + timedelta(days=200)).date().isoformat()  # bookings start at most 2 years ahead
    answer = cast.customer.http.post("/v1/bookings", json={
        "resource_id": resource["id"], "starts_at": f"{day}T10:00:00+02:00", "ends_at": f"{day}T11:00:00+02:00"})
    assert answer.status_code == 201, answer.text
    assert answer.json()["starts_at"] == f"{day}T08:00:00Z"


def test_each_role_lists_only_its_bookings(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.owner, capacity=5)
    mine = make_booking(cast.customer, resource["id"])
    theirs = make_booking(cast.other_customer, resource["id"])

    def ids(actor_http: httpx.Client) -> set[str]:
        return {b["id"] for b in actor_http.get("/v1/bookings", params={"resource_id": resource["id"]}).json()["items"]}

    assert ids(cast.customer.http) == {mine["id"]}
    assert ids(cast.other_customer.http) == {theirs["id"]}
    assert ids(cast.owner.http) == {mine["id"], theirs["id"]}
    assert ids(cast.other_provider.http) == set()
    assert ids(cast.admin.http) == {mine["id"], theirs["id"]}
    assert_problem(cast.other_customer.http.get(f"/v1/bookings/{mine['id']}"), 404)
    assert_problem(cast.other_provider.http.get(f"/v1/bookings/{mine['id']}/history"), 404)


def test_list_filters_by_status_and_overlap_window(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.owner, capacity=5)
    early = make_booking(cast.customer, resource["id"], start_hours=100, length_hours=2)  # 100-102
    late = make_booking(cast.customer, resource["id"], start_hours=110, length_hours=1)   # 110-111
    cast.owner.http.post(f"/v1/bookings/{late['id']}/confirm")

    def ids(**params: str) -> list[str]:
        answer = cast.owner.http.get("/v1/bookings", params={"resource_id": resource["id"], **params})
        assert answer.status_code == 200, answer.text
        return [b["id"] for b in answer.json()["items"]]

    assert ids(status="confirmed") == [late["id"]]
    assert ids(status="pending") == [early["id"]]
    assert ids(**{"from": at(101), "to": at(105)}) == [early["id"]]  # overlaps the tail of `early`
    assert ids(**{"from": at(102), "to": at(110)}) == []               # half-open on both sides
    assert set(ids(**{"from": at(90)})) == {early["id"], late["id"]}


def test_booking_list_pages_cover_everything_once(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.owner, capacity=10)
    made = {make_booking(cast.customer, resource["id"], start_hours=200 + i)["id"] for i in range(7)}
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3, "resource_id": resource["id"], **({"cursor": cursor} if cursor else {})}
        page = cast.customer.http.get("/v1/bookings", params=params).json()
        assert len(page["items"]) <= 3
        seen += [b["id"] for b in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(made)


def test_idempotent_retry_returns_the_original_and_creates_nothing(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.owner, capacity=5)
    body = {"resource_id": resource["id"], "starts_at": at(300), "ends_at": at(301)}
    headers = {"Idempotency-Key": "retry-me-1"}
    first = cast.customer.http.post("/v1/bookings", json=body, headers=headers)
    again = cast.customer.http.post("/v1/bookings", json=body, headers=headers)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    listed = cast.customer.http.get("/v1/bookings", params={"resource_id": resource["id"]}).json()["items"]
    assert len(listed) == 1
    other_body = cast.customer.http.post("/v1/bookings", json={**body, "seats": 2}, headers=headers)
    assert_problem(other_body, 422)
    # the key is the caller's own: another customer may use the same key for their own booking
    theirs = cast.other_customer.http.post("/v1/bookings", json=body, headers=headers)
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]


def test_same_key_while_first_request_runs_is_409(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.owner, capacity=50)
    body = {"resource_id": resource["id"], "starts_at": at(400), "ends_at": at(401)}

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30, headers={
                "Authorization": f"Bearer {cast.customer.token}", "Idempotency-Key": "burst-key"}) as client:
            answers = await asyncio.gather(*[client.post("/v1/bookings", json=body) for _ in range(10)])
        return [a.status_code for a in answers]

    statuses = asyncio.run(burst())
    assert set(statuses) <= {201, 409} and 201 in statuses, statuses
    listed = cast.customer.http.get("/v1/bookings", params={"resource_id": resource["id"]}).json()["items"]
    assert len(listed) == 1


def test_failed_request_does_not_burn_the_key(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.owner, capacity=1)
    make_booking(cast.other_customer, resource["id"], start_hours=500)
    body = {"resource_id": resource["id"], "starts_at": at(500), "ends_at": at(501)}
    headers = {"Idempotency-Key": "after-conflict"}
    assert_problem(cast.customer.http.post("/v1/bookings", json=body, headers=headers), 409)
    assert_problem(cast.customer.http.post("/v1/bookings", json=body, headers=headers), 409)  # reruns, still full
    # the failed attempts created nothing, so the key is free for a corrected request ...
    moved = {**body, "starts_at": at(502), "ends_at": at(503)}
    assert cast.customer.http.post("/v1/bookings", json=moved, headers=headers).status_code == 201
    # ... which then owns it
    assert_problem(cast.customer.http.post("/v1/bookings", json=body, headers=headers), 422)


def test_notes_can_be_changed_and_bump_version(server: Server, cast: Cast) -> None:
    booking = make_booking(cast.customer, make_resource(cast.owner)["id"])
    answer = cast.customer.http.patch(f"/v1/bookings/{booking['id']}", json={"notes": "Bring a projector"})
    assert answer.status_code == 200
    assert answer.json()["notes"] == "Bring a projector" and answer.json()["version"] == 2
    assert answer.json()["status"] == "pending"
    history = cast.customer.http.get(f"/v1/bookings/{booking['id']}/history").json()["items"]
    assert [h["action"] for h in history] == ["create", "update"]


def test_dates_beyond_the_calendar_in_utc_are_422(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.owner)
    answer = cast.customer.http.post("/v1/bookings", json={
        "resource_id": resource["id"], "starts_at": "9999-12-31T20:00:00+00:00",
        "ends_at": "9999-12-31T23:30:00-05:00"})
    assert assert_problem(answer, 422)["errors"][0]["field"] == "ends_at"
    listed = cast.customer.http.get("/v1/bookings", params={"from": "0001-01-01T00:00:00+01:00"})
    assert assert_problem(listed, 422)["errors"][0]["field"] == "from"


def test_racing_status_actions_lose_with_the_current_status(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.owner)
    for round_ in range(5):
        booking = make_booking(cast.customer, resource["id"], start_hours=600 + round_)

        async def race(booking_id: str) -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=30,
                                         headers={"Authorization": f"Bearer {cast.owner.token}"}) as client:
                return await asyncio.gather(client.post(f"/v1/bookings/{booking_id}/confirm"),
                                            client.post(f"/v1/bookings/{booking_id}/reject"))

        answers = asyncio.run(race(booking["id"]))
        assert sorted(a.status_code for a in answers) == [200, 409]
        loser = next(a for a in answers if a.status_code == 409).json()
        assert loser["current_status"] in {"confirmed", "rejected"} and "allowed_actions" in loser
