"""Query strings are checked like bodies, and bodies must be sent as JSON.

An unknown query parameter, or one given twice, is 422 naming it (on every route, the bare-ASGI
event stream included); a body whose `Content-Type` is not JSON is 415. A caller without a valid
token still gets 401 first.
"""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import Cast, Server, assert_problem, at, make_resource


@pytest.mark.parametrize("path,params,field", [
    ("/v1/notifications", {"type": "booking.created"}, "type"),
    ("/v1/bookings", {"statuz": "pending"}, "statuz"),
    ("/v1/bookings", {"from_": at(1)}, "from_"),  # the Python name is not the parameter's name
    ("/v1/resources", {"limit": "5", "sort": "name"}, "sort"),
    ("/v1/me", {"debug": "1"}, "debug"),
    ("/v1/notifications/unread-count", {"x": ""}, "x"),
    ("/v1/events/poll", {"timeout": "0", "since": "0-0"}, "since"),
])
def test_unknown_query_parameter_is_422_naming_it(cast: Cast, path: str, params: dict[str, str], field: str) -> None:
    problem = assert_problem(cast.customer.http.get(path, params=params), 422)
    assert problem["errors"][0]["field"] == field, problem


def test_known_parameters_and_aliases_are_accepted(cast: Cast) -> None:
    resource = make_resource(cast.owner)
    answers = [
        cast.customer.http.get("/v1/bookings", params={"from": at(1), "to": at(2), "limit": "3", "status": "pending"}),
        cast.customer.http.get("/v1/notifications", params={"unread": "true", "limit": "1"}),
        cast.customer.http.get(f"/v1/resources/{resource['id']}/availability", params={"from": at(1), "to": at(3)}),
        cast.customer.http.get("/v1/events/poll", params={"timeout": "0", "topics": f"resource:{resource['id']}"}),
        cast.admin.http.get("/v1/users", params={"role": "customer", "active": "true"}),
    ]
    assert [a.status_code for a in answers] == [200] * len(answers), [a.text for a in answers]


def test_repeated_query_parameter_is_422(cast: Cast) -> None:
    answer = cast.customer.http.get("/v1/bookings", params=[("limit", "1"), ("limit", "2")])
    assert assert_problem(answer, 422)["errors"][0]["field"] == "limit"
    answer = cast.customer.http.get("/v1/events/poll", params=[("timeout", "0"), ("timeout", "0")])
    assert assert_problem(answer, 422)["errors"][0]["field"] == "timeout"


def test_unknown_query_parameter_without_a_token_is_401(server: Server) -> None:
    with server.client() as anonymous:
        assert_problem(anonymous.get("/v1/notifications", params={"type": "x"}), 401)
        assert_problem(anonymous.get("/v1/events/poll", params={"timeout": "0", "x": "1"}), 401)
        bad_stream_token = {"timeout": "0", "x": "1", "access_token": "not.a.token"}
        assert_problem(anonymous.get("/v1/events/poll", params=bad_stream_token), 401)


def test_stream_refuses_unknown_and_repeated_parameters_with_422(server: Server, cast: Cast) -> None:
    with server.client(cast.customer.token) as client:
        for params in ([("last_event_idd", "0-0")], [("topics", ""), ("topics", "")], [("token", "x")]):
            with client.stream("GET", "/v1/events/stream", params=params) as answer:
                answer.read()
                field = params[0][0]
                assert assert_problem(answer, 422)["errors"][0]["field"] == field, params
    with server.client() as anonymous, anonymous.stream("GET", "/v1/events/stream", params={"x": "1"}) as answer:
        answer.read()
        assert_problem(answer, 401)


def test_stream_opens_with_its_own_parameters(server: Server, cast: Cast) -> None:
    token = cast.customer.http.post("/v1/auth/stream-token").json()["token"]
    params = {"access_token": token, "last_event_id": "0-0", "topics": ""}
    with httpx.Client(base_url=server.base_url, timeout=10) as client, \
            client.stream("GET", "/v1/events/stream", params=params) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None, "application/xml"])
def test_body_that_is_not_sent_as_json_is_415(server: Server, cast: Cast, content_type: str | None) -> None:
    body = json.dumps({"email": "x@example.test", "password": "password-123"}).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    with server.client() as anonymous:
        assert_problem(anonymous.post("/v1/auth/token", content=body, headers=headers), 415)
    resource = json.dumps({"name": "Plain Room"}).encode()
    assert_problem(cast.owner.http.post("/v1/resources", content=resource, headers=headers), 415)
    mine = cast.owner.http.get("/v1/resources", params={"owner_id": cast.owner.id, "limit": "200"}).json()["items"]
    assert all(r["name"] != "Plain Room" for r in mine)


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/merge-patch+json",
                                          "APPLICATION/JSON"])
def test_json_and_plus_json_content_types_are_accepted(cast: Cast, content_type: str) -> None:
    body = json.dumps({"name": "Json Room"}).encode()
    answer = cast.owner.http.post("/v1/resources", content=body, headers={"Content-Type": content_type})
    assert answer.status_code == 201, answer.text


def test_action_without_a_body_needs_no_content_type(cast: Cast) -> None:
    resource = make_resource(cast.owner)
    booking = cast.customer.http.post("/v1/bookings", json={"resource_id": resource["id"], "starts_at": at(90),
                                                            "ends_at": at(91)}).json()
    assert cast.owner.http.post(f"/v1/bookings/{booking['id']}/confirm").status_code == 200
