"""A pooled request that nobody answers moves on at each response deadline, then expires — with
real processes (`bookwire api`, two RQ workers, two rq-schedulers on a private Redis), on SQLite and
PostgreSQL, watched over SSE as the customer would (SPEC "Pools"). Each move happens within 2 s of
its deadline and once, however many workers and schedulers run; the new owner's deadline starts at
the move. The stack and the SSE recorder are test_reminders.py's."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from conftest import fresh_database, make_resource, register
from test_reminders import (
    LATENESS_LIMIT,
    Recorder,
    bookwire_stack,
    cast_of,
    eventually,
    ok,
    parse_time,
    private_redis,
    seconds_ahead,
    sleep_until,
)

DEADLINE = 2  # response_deadline_seconds of every resource of the pool


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_an_unanswered_pooled_request_moves_on_at_each_deadline_then_expires(tmp_path: Path, engine: str) -> None:
    with fresh_database(engine, tmp_path) as database_url, private_redis(tmp_path / "redis") as redis, \
            bookwire_stack(tmp_path / "var", redis.url, database_url=database_url) as stack:
        people = cast_of(stack.server)
        pool = ok(people.admin.http.post("/v1/pools", json={"name": "Short notice"}), 201)
        owners = [people.owner, register(stack.server, "provider"), register(stack.server, "provider")]
        members = [make_resource(owner, name=f"Session {n}", pool_id=pool["id"], response_deadline_seconds=DEADLINE)
                   for n, owner in enumerate(owners)]
        customer = people.customer
        with Recorder(stack.base_url, customer) as to_customer:
            booking = ok(customer.http.post("/v1/bookings", json={
                "pool_id": pool["id"], "starts_at": seconds_ahead(3600).isoformat(),
                "ends_at": seconds_ahead(7200).isoformat()}), 201)
            bid = booking["id"]

            def history() -> list[dict[str, object]]:
                items: list[dict[str, object]] = ok(customer.http.get(f"/v1/bookings/{bid}/history"))["items"]
                return items

            eventually(lambda: to_customer.booking_events("booking.expired", bid), 3 * (DEADLINE + LATENESS_LIMIT) + 5,
                       "booking.expired after the pool ran out", stack.explain)
            sleep_until(seconds_ahead(DEADLINE + 1))  # a duplicate move or expiry would show by now
            entries = history()
            assert [e["action"] for e in entries] == ["create", "reassign", "reassign", "expire"], entries
            asked_at = parse_time(booking["created_at"])
            late = []
            for entry in entries[1:]:
                moved_at = parse_time(str(entry["at"]))
                late.append((moved_at - (asked_at + timedelta(seconds=DEADLINE))).total_seconds())
                asked_at = moved_at  # the next owner's deadline runs from the move
            print(f"\n[pool deadlines, {engine}] moved/expired {', '.join(f'{s:.3f}' for s in late)} s after "
                  "each deadline")
            assert all(0 <= s <= LATENESS_LIMIT for s in late), late
            moves = to_customer.booking_events("booking.reassigned", bid)
            assert len(moves) == 2 and len(to_customer.booking_events("booking.expired", bid)) == 1, \
                [r.envelope["type"] for r in to_customer.received]
            visited = [booking["resource_id"], *(m.envelope["data"]["resource_id"] for m in moves)]
            assert sorted(visited) == sorted(m["id"] for m in members), "each resource offered it once"
            assert [m.envelope["data"]["from_resource_id"] for m in moves] == visited[:2]
        final = ok(customer.http.get(f"/v1/bookings/{bid}"))
        assert final["status"] == "expired" and final["resource_id"] == visited[-1], final
        # Expired, it holds no seat: the pool takes a request for the same time again.
        ok(people.other_customer.http.post("/v1/bookings", json={
            "pool_id": pool["id"], "starts_at": booking["starts_at"], "ends_at": booking["ends_at"]}), 201)
