"""`Prepared` (app/db/prepared.py) against Piccolo itself, on SQLite and PostgreSQL: the same SQL,
the same values in the same places, the same rows. It reads `QueryString.bundle`, so a Piccolo
upgrade that changes how queries flatten fails here first."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import fresh_database
from piccolo.querystring import QueryString
from piccolo.table import Table

from app.bookings.placement import _bookable_resource_rows, _select_bookable_resource
from app.db.engine import bind_engine, close_engine, engine_from_url, open_engine
from app.db.prepared import Prepared, insert_rows
from app.db.tables import ALL_TABLES, Booking, BookingHistory, Notification, OutboxEntry, Resource, User
from app.db.transactions import write_transaction


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url


async def _scenario(database_url: str) -> None:
    engine = engine_from_url(database_url)
    bind_engine(engine)
    await open_engine(engine)
    try:
        for table in (User, Resource, Booking, BookingHistory, Notification, OutboxEntry):
            await table.create_table().run()
        now = datetime.now(UTC)
        owners = {}
        for name, active in (("active", True), ("gone", False)):
            owners[name] = uuid.uuid4()
            await User.insert(User(id=owners[name], email=f"{name}@example.test", name=f"Owner {name}",
                                   role="provider", password_hash="x", active=active, created_at=now))
        resources = {}
        for name, owner, active in (("offered", "active", True), ("inactive", "active", False),
                                    ("owner-gone", "gone", True)):
            resources[name] = uuid.uuid4()
            await Resource.insert(Resource(id=resources[name], name=f"Room {name}", kind="room", owner_id=owners[owner],
                                           active=active, capacity=2, price_cents=100, currency="EUR",
                                           timezone="Europe/Paris", created_at=now, updated_at=now))

        for name, resource_id in [*resources.items(), ("missing", uuid.uuid4())]:
            async with write_transaction():  # FOR UPDATE on PostgreSQL, as in a booking change
                expected = await _select_bookable_resource(resource_id)
                got = await _bookable_resource_rows(resource_id)
            assert got == ([expected] if expected else []), name
            assert bool(got) == (name == "offered"), name
        assert got == [] and expected is None
        offered = (await _bookable_resource_rows(resources["offered"]))[0]
        assert offered["owner_name"] == "Owner active" and isinstance(offered["id"], uuid.UUID)

        # The SQL and its arguments are Piccolo's own for the same values.
        template, slots = _bookable_resource_rows.compile()
        resource_id = resources["offered"]
        args = [resource_id if is_param else value for is_param, value in slots]
        piccolo_sql, piccolo_args = _select_bookable_resource(resource_id).querystrings[0].compile_string(
            engine.engine_type)
        assert QueryString(template, *args).compile_string(engine.engine_type) == (piccolo_sql, piccolo_args)
        assert ("FOR UPDATE" in piccolo_sql) == (engine.engine_type == "postgres")

        await _inserts_read_back_as_piccolo_writes_them(owners["active"], resources["offered"], now)
    finally:
        await close_engine(engine)


async def _inserts_read_back_as_piccolo_writes_them(user_id: uuid.UUID, resource_id: uuid.UUID,
                                                    now: datetime) -> None:
    """insert_rows and Piccolo's own insert store the same values: None, JSON, a serial id left out,
    one row and several."""
    booking = {"id": uuid.uuid4(), "resource_id": resource_id, "customer_id": user_id, "owner_id": user_id,
               "starts_at": now, "ends_at": now + timedelta(hours=1), "seats": 1, "notes": "", "status": "pending",
               "price_cents": 100, "currency": "EUR", "version": 1, "created_at": now, "updated_at": now,
               "pool_id": None, "offered_at": None}
    await insert_rows(Booking, [booking])
    assert await Booking.select().where(Booking.id == booking["id"]).first() == booking

    def history(reason: str | None) -> dict[str, Any]:
        return {"id": uuid.uuid4(), "booking_id": booking["id"], "action": "create", "actor_id": None,
                "from_status": None, "to_status": "pending", "reason": reason, "at": now}

    def notification(data: Any) -> dict[str, Any]:
        return {"id": uuid.uuid4(), "user_id": user_id, "type": "t", "title": "T", "body": "b\nc", "data": data,
                "created_at": now, "read_at": None}

    cases: list[tuple[type[Table], list[dict[str, Any]]]] = [
        (BookingHistory, [history(None)]), (BookingHistory, [history("why"), history(None)]),
        (Notification, [notification({"a": [1, "x"], "b": None})]),
        (Notification, [notification({"n": 1}), notification([])]),
    ]
    for table, rows in cases:
        twins = [{**row, "id": uuid.uuid4()} for row in rows]
        await insert_rows(table, rows)
        await table.insert(*(table(**row) for row in twins))
        for row, twin in zip(rows, twins, strict=True):
            key: Any = table._meta.primary_key
            ours = await table.select().where(key == row["id"]).output(load_json=True).first()
            theirs = await table.select().where(key == twin["id"]).output(load_json=True).first()
            assert ours is not None and theirs is not None
            assert {**ours, "id": None} == {**theirs, "id": None}, table
    entries = [{"key": uuid.uuid4(), "kind": "event", "payload": f"{{\"n\": {i}}}", "created_at": now}
               for i in range(3)]
    await insert_rows(OutboxEntry, entries)
    stored = await OutboxEntry.select().order_by(OutboxEntry.id)
    assert [row["key"] for row in stored] == [e["key"] for e in entries]  # ids given by the database, in order
    assert stored[0]["id"] < stored[1]["id"] < stored[2]["id"]


def test_prepared_runs_the_same_sql_and_returns_the_same_rows(database_url: str) -> None:
    before = {table: table._meta._db for table in ALL_TABLES}
    try:
        asyncio.run(_scenario(database_url))
    finally:
        for table, engine in before.items():
            table._meta._db = engine


def test_a_parameter_that_does_not_reach_the_sql_as_given_is_refused() -> None:
    def build(name: Any) -> Any:
        return User.select(User.id).where(User.name == name.upper())  # the value is changed on the way

    with pytest.raises(ValueError, match="do not reach the SQL"):
        Prepared(User, build, str).compile()
