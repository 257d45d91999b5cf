"""A resource is offered only while it is active and its owner's account is: otherwise nobody but
its owner and admins may book it, see it, or keep hearing its events."""

from __future__ import annotations

import asyncio

from conftest import Cast, Server, assert_problem, at, make_booking, make_resource, register
from events import connect, events_until_mark, mark, ok, stream_token


def test_a_deactivated_providers_resources_are_neither_bookable_nor_listed(server: Server, cast: Cast) -> None:
    provider = register(server, "provider", "Gone Soon")
    resource = make_resource(provider, requires_confirmation=False)
    make_booking(cast.customer, resource["id"], start_hours=300)  # bookable while the provider is active
    ok(cast.admin.http.patch(f"/v1/users/{provider.id}", json={"active": False}))
    refused = cast.customer.http.post("/v1/bookings", json={
        "resource_id": resource["id"], "starts_at": at(302), "ends_at": at(303)})
    assert assert_problem(refused, 422)["errors"][0]["field"] == "resource_id"
    assert_problem(cast.customer.http.get(f"/v1/resources/{resource['id']}"), 404)
    listed = ok(cast.customer.http.get("/v1/resources", params={"owner_id": provider.id, "limit": 200}))
    assert listed["items"] == []
    assert ok(cast.admin.http.get(f"/v1/resources/{resource['id']}"))["id"] == resource["id"]  # admins still see it
    ok(cast.admin.http.patch(f"/v1/users/{provider.id}", json={"active": True}))
    assert ok(cast.customer.http.get(f"/v1/resources/{resource['id']}"))["id"] == resource["id"]


def test_followers_stop_hearing_a_resource_that_became_inactive(server: Server, cast: Cast) -> None:
    resource = make_resource(cast.owner, name="Fading Room")
    topic = f"resource:{resource['id']}"

    async def scenario() -> None:
        follower = await connect(server.base_url, stream_token(cast.customer), topics=topic)
        owner = await connect(server.base_url, stream_token(cast.owner), topics=topic)
        ok(cast.owner.http.patch(f"/v1/resources/{resource['id']}", json={"active": False}))
        ok(cast.owner.http.patch(f"/v1/resources/{resource['id']}", json={"price_cents": 999}))
        last = mark(cast.admin)
        seen = [(e.event, e.envelope["channel"]) for e in await events_until_mark(follower, last)]
        owner_seen = [(e.event, e.envelope["channel"]) for e in await events_until_mark(owner, last)]
        follower.close()
        owner.close()
        assert ("resource.updated", topic) in seen  # the change that made it inactive still arrives
        assert ("resource.pricing_updated", topic) not in seen, seen  # nothing after it
        assert ("resource.pricing_updated", topic) in owner_seen, owner_seen  # the owner keeps following

    asyncio.run(scenario())
