"""The capacity guarantee under racing requests, on each database."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime

import httpx
from conftest import Actor, Cast, Server, at, make_resource, register

RACERS = 40


async def _race(server: Server, requests: list[tuple[Actor, dict[str, object]]]) -> list[httpx.Response]:
    """Send every request at once, each on its own connection, released together."""
    gate = asyncio.Event()
    limits = httpx.Limits(max_connections=len(requests))
    async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=60) as client:

        async def one(actor: Actor, body: dict[str, object]) -> httpx.Response:
            await gate.wait()
            return await client.post("/v1/bookings", json=body, headers={"Authorization": f"Bearer {actor.token}"})

        tasks = [asyncio.create_task(one(actor, body)) for actor, body in requests]
        await asyncio.sleep(0.2)  # let every task reach the gate
        gate.set()
        return await asyncio.gather(*tasks)


def _customers(server: Server, cast: Cast, count: int) -> list[Actor]:
    return [cast.customer, cast.other_customer] + [register(server, "customer") for _ in range(count - 2)]


def test_forty_racers_for_one_seat_exactly_one_wins(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.owner, capacity=1)
    customers = _customers(server, cast, 8)
    body = {"resource_id": resource["id"], "starts_at": at(30), "ends_at": at(31)}
    answers = asyncio.run(_race(server, [(customers[i % len(customers)], body) for i in range(RACERS)]))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [201] + [409] * (RACERS - 1), statuses
    listed = cast.admin.http.get("/v1/bookings", params={"resource_id": resource["id"]}).json()["items"]
    assert len(listed) == 1


def _peak(intervals: list[tuple[datetime, datetime, int]]) -> int:
    points = sorted({p for s, e, _ in intervals for p in (s, e)})
    return max((sum(n for s, e, n in intervals if s <= p < e) for p in points), default=0)


def test_multi_seat_racers_never_exceed_capacity_three(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.owner, capacity=3)
    customers = _customers(server, cast, 8)
    rng = random.Random(7)
    requests = []
    for i in range(RACERS):
        start = rng.choice([40.0, 40.5, 41.0])  # overlapping, staggered half-hour slots
        body = {"resource_id": resource["id"], "starts_at": at(start), "ends_at": at(start + rng.choice([0.5, 1.0])),
                "seats": rng.choice([1, 2, 3])}
        requests.append((customers[i % len(customers)], body))
    answers = asyncio.run(_race(server, requests))
    assert {a.status_code for a in answers} <= {201, 409}, [a.text for a in answers if a.status_code >= 500]
    winners = [a.json() for a in answers if a.status_code == 201]
    assert winners, "somebody must win"
    intervals = [(datetime.fromisoformat(b["starts_at"]), datetime.fromisoformat(b["ends_at"]), b["seats"])
                 for b in winners]
    assert _peak(intervals) <= 3
    availability = cast.owner.http.get(f"/v1/resources/{resource['id']}/availability",
                                       params={"from": at(39), "to": at(43)}).json()
    assert max(slot["seats_taken"] for slot in availability["busy"]) <= 3
    assert _peak(intervals) == max(slot["seats_taken"] for slot in availability["busy"])


def test_racing_reschedules_into_one_free_slot_one_wins(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.owner, capacity=1, requires_confirmation=False)
    bookings = []
    for i in range(10):
        answer = cast.customer.http.post("/v1/bookings", json={
            "resource_id": resource["id"], "starts_at": at(50 + i), "ends_at": at(51 + i)})
        assert answer.status_code == 201, answer.text
        bookings.append(answer.json())

    async def reschedule_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60,
                                     headers={"Authorization": f"Bearer {cast.customer.token}"}) as client:
            return await asyncio.gather(*[
                client.patch(f"/v1/bookings/{b['id']}", json={"starts_at": at(70), "ends_at": at(71)})
                for b in bookings
            ])

    statuses = sorted(a.status_code for a in asyncio.run(reschedule_all()))
    assert statuses == [200] + [409] * 9, statuses


def test_forty_racers_for_a_pool_of_three_single_seats_three_win(server: Server, cast: Cast) -> None:
    """Pooled requests race for one interval: each of the three resources takes exactly one, while
    direct requests for the same resources race alongside (a pooled request must not take a seat a
    direct one holds, nor the other way round)."""
    pool = cast.admin.http.post("/v1/pools", json={"name": "Race pool"}).json()
    members = [make_resource(owner, capacity=1, pool_id=pool["id"])
               for owner in (cast.owner, cast.other_provider, cast.owner)]
    customers = _customers(server, cast, 8)
    slot = {"starts_at": at(45), "ends_at": at(46)}
    pooled = [(customers[i % len(customers)], {"pool_id": pool["id"], **slot}) for i in range(RACERS)]
    direct = [(customers[i % len(customers)], {"resource_id": members[i % 3]["id"], **slot}) for i in range(6)]
    answers = asyncio.run(_race(server, pooled + direct))
    assert {a.status_code for a in answers} <= {201, 409}, [a.text for a in answers if a.status_code >= 500]
    winners = [a.json() for a in answers if a.status_code == 201]
    assert sorted(b["resource_id"] for b in winners) == sorted(m["id"] for m in members), winners
    free = cast.customer.http.get(f"/v1/pools/{pool['id']}/availability", params={"from": at(44), "to": at(47)})
    assert [(b["seats_taken"], b["seats_left"]) for b in free.json()["busy"]] == [(3, 0)], free.text
