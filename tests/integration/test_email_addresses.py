"""An e-mail address is one bare address (issue 7 item 1): anything that could add a recipient, a
display name or a route, and any non-ASCII address, is 422 on `email` at registration and at
sign-in, and registration then creates nothing.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from conftest import Cast, Server, assert_problem

INJECTIONS = [
    "a@example.com,root@example.org",
    "a@example.com, root@example.org",
    "a@example.com;root@example.org",
    "evil<victim@example.org>",
    "Evil <victim@example.org>",
    "victim@example.org (comment)",
    '"a,b"@example.com',
    "group:victim@example.org;",
    "a\\@b@example.com",
    "@relay.example:victim@example.org",
    "victim%example.org@relay.example.com",
    "relay!victim@example.com",
    "a@example.com\r\nBcc: root@example.org",
    "a@example.com\n",
    " a@example.com",
    "a b@example.com",
    "a..b@example.com",
    "a@[127.0.0.1]",
    "a@localhost",
    "a@-example.com",
]
INTERNATIONAL = ["josé@example.com", "a@bücher.example", "用户@例子.广告"]


def user_emails(cast: Cast) -> set[str]:
    emails: set[str] = set()
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        page = cast.admin.http.get("/v1/users", params=params)
        assert page.status_code == 200, page.text
        emails |= {u["email"] for u in page.json()["items"]}
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return emails


@pytest.mark.parametrize("address", INJECTIONS + INTERNATIONAL)
def test_registration_with_an_address_that_is_not_one_plain_address_is_422_and_creates_nothing(
    server: Server, cast: Cast, address: str,
) -> None:
    before = user_emails(cast)
    with server.client() as client:
        answer = client.post("/v1/auth/register", json={"email": address, "password": "password-123",
                                                        "name": "Mallory", "role": "customer"})
        problem = assert_problem(answer, 422)
        assert problem["errors"][0]["field"] == "email", problem
        assert "plain address" in problem["errors"][0]["message"], problem
        signed_in = client.post("/v1/auth/token", json={"email": address, "password": "password-123"})
        assert assert_problem(signed_in, 422)["errors"][0]["field"] == "email"
    assert user_emails(cast) == before


def test_non_ascii_addresses_are_refused_with_a_message_that_says_so(server: Server) -> None:
    with server.client() as client:
        for address in INTERNATIONAL:
            problem = assert_problem(client.post("/v1/auth/register", json={
                "email": address, "password": "password-123", "name": "José", "role": "customer"}), 422)
            assert "internationalised addresses are not supported" in problem["errors"][0]["message"], problem


def test_plain_addresses_of_every_allowed_shape_register(server: Server) -> None:
    with server.client() as client:
        for local, domain in (("o'brien.j+tag=x_y-z", "mail.example.co.uk"), ("x", "xn--bcher-kva.example")):
            address = f"{local}-{uuid.uuid4().hex[:8]}@{domain}"
            answer = client.post("/v1/auth/register", json={"email": address, "password": "password-123",
                                                            "name": "Plain", "role": "customer"})
            assert answer.status_code == 201, answer.text
