"""Bad input is refused with a 4xx RFC 9457 problem document and changes nothing.

One table drives the whole file: each row is a request that a careless or hostile client might
send (malformed JSON, wrong types, unknown or missing fields, bad UUIDs, dates, sizes, control
characters, injection-looking query strings, oversized bodies, bad idempotency keys, bad
registrations). Each row runs against a live API on every database engine and must get:

- the expected 4xx status (never a 500, never a 2xx) as `application/problem+json`;
- for a 422, an `errors` list of `{"field", "message"}` that names the offending field;
- no change: the callers' bookings and resources (counted through the list endpoints), the
  target booking and resource used by path-based rows, and, for registrations, no new account.

One positive test checks the other side of the free-text rule: `\\n` and `\\t` are accepted in
`notes` and `description`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from conftest import Actor, Cast, Server, assert_problem, at, make_booking, make_resource

RESOURCE = "<resource>"
"""Placeholder for the id of the target resource (capacity 2, owned by `owner`)."""
BOOKING = "<booking>"
"""Placeholder for the id of the target booking (the customer's, on the target resource)."""
DROP = object()
"""A field value meaning "leave this field out of the body"."""

TARGET_CAPACITY = 2
MIB = 1024 * 1024
START, END = at(48), at(49)
UNKNOWN_UUID = "00000000-0000-4000-8000-000000000000"
ANY_PATH_REJECTION = (400, 404, 422)
"""A bad UUID in a path may be 404 (no such URL) or a 400/422: any problem document is fine."""


def booking_body(**fields: Any) -> dict[str, Any]:
    """A valid booking request on the target resource, with `fields` replaced (DROP removes one)."""
    body: dict[str, Any] = {"resource_id": RESOURCE, "starts_at": START, "ends_at": END, "seats": 1}
    return _merge(body, fields)


def resource_body(**fields: Any) -> dict[str, Any]:
    """A valid resource request, with `fields` replaced (DROP removes one)."""
    body: dict[str, Any] = {"name": "Bad Input Room", "kind": "room", "capacity": 1, "currency": "EUR",
                            "timezone": "Europe/Paris"}
    return _merge(body, fields)


def register_body(tag: str, **fields: Any) -> dict[str, Any]:
    """A valid registration for a fresh e-mail derived from `tag`, with `fields` replaced."""
    body: dict[str, Any] = {"email": f"bad-input-{tag}@example.test", "password": "password-123",
                            "name": "Mallory", "role": "customer"}
    return _merge(body, fields)


def _merge(body: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    merged = {**body, **fields}
    return {key: value for key, value in merged.items() if value is not DROP}


def padded_booking(total_bytes: int) -> bytes:
    """A booking body, valid but for its size, of exactly `total_bytes` bytes."""
    head = json.dumps(booking_body(notes="")).encode()[:-2]  # ends with `"notes": "`
    tail = b'"}'
    return head + b"a" * (total_bytes - len(head) - len(tail)) + tail


Status = int | tuple[int, ...]
"""The status a row expects, or the statuses it accepts."""


@dataclass(frozen=True)
class Case:
    """One bad request and the answer it must get."""

    id: str
    method: str
    path: str
    status: Status
    field: str | None = None
    """The field that the 422 `errors` list must name (None: any field is fine)."""
    actor: str = "customer"
    """A member of the cast, or "anonymous"."""
    json: Any = None
    content: bytes | None = None
    params: dict[str, str] = dataclasses.field(default_factory=dict)
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def registers(self) -> str | None:
        """The e-mail this row tries to register, if it is a registration."""
        if self.path == "/v1/auth/register" and isinstance(self.json, dict):
            email = self.json.get("email")
            return email if isinstance(email, str) else None
        return None


def raw(name: str, path: str, content: bytes, status: Status = 400, actor: str = "customer") -> Case:
    """A POST whose body is sent byte for byte as `application/json`."""
    return Case(name, "POST", path, status, actor=actor, content=content,
                headers={"Content-Type": "application/json"})


def post(name: str, path: str, body: Any, field: str | None, status: Status = 422,
         actor: str = "customer", headers: dict[str, str] | None = None) -> Case:
    """A POST with a JSON body."""
    return Case(name, "POST", path, status, field, actor, json=body, headers=headers or {})


def query(name: str, path: str, params: dict[str, str], status: Status, field: str | None = None,
          actor: str = "customer") -> Case:
    """A GET with query parameters."""
    return Case(name, "GET", path, status, field, actor, params=params)


BOOKINGS, RESOURCES, REGISTER = "/v1/bookings", "/v1/resources", "/v1/auth/register"
AVAILABILITY = f"/v1/resources/{RESOURCE}/availability"
INJECTION = "' OR 1=1 --"

CASES: list[Case] = [
    # Malformed JSON: 400.
    raw("json-truncated", BOOKINGS, b'{"resource_id": "'),
    raw("json-trailing-garbage", BOOKINGS, json.dumps(booking_body()).encode() + b" garbage"),
    raw("json-two-documents", BOOKINGS, b'{"seats": 1}{"seats": 2}'),
    raw("json-single-quotes", BOOKINGS, b"{'seats': 1}"),
    raw("json-invalid-utf8", BOOKINGS, b'{"notes": "\xff\xfe"}'),
    raw("json-empty-body", BOOKINGS, b""),
    raw("json-truncated-resource", RESOURCES, b'{"name": "Room', actor="owner"),
    raw("json-truncated-register", REGISTER, b'{"email": ', actor="anonymous"),
    # Well-formed JSON that is not an object: 400 or 422, as long as it is a problem.
    Case("json-array-not-object", "POST", BOOKINGS, (400, 422), content=b"[1, 2, 3]",
         headers={"Content-Type": "application/json"}),
    Case("json-string-not-object", "POST", RESOURCES, (400, 422), actor="owner", content=b'"Room A"',
         headers={"Content-Type": "application/json"}),
    Case("json-null-not-object", "POST", BOOKINGS, (400, 422), content=b"null",
         headers={"Content-Type": "application/json"}),
    # Wrong types.
    post("type-seats-string", BOOKINGS, booking_body(seats="2"), "seats"),
    post("type-seats-float", BOOKINGS, booking_body(seats=1.5), "seats"),
    post("type-notes-number", BOOKINGS, booking_body(notes=42), "notes"),
    post("type-starts-at-null", BOOKINGS, booking_body(starts_at=None), "starts_at"),
    post("type-resource-id-number", BOOKINGS, booking_body(resource_id=12345), "resource_id"),
    post("type-capacity-string", RESOURCES, resource_body(capacity="two"), "capacity", actor="owner"),
    post("type-capacity-numeric-string", RESOURCES, resource_body(capacity="3"), "capacity", actor="owner"),
    post("type-name-number", RESOURCES, resource_body(name=42), "name", actor="owner"),
    post("type-name-null", RESOURCES, resource_body(name=None), "name", actor="owner"),
    post("type-requires-confirmation-string", RESOURCES, resource_body(requires_confirmation="yes"),
         "requires_confirmation", actor="owner"),
    # Unknown and missing fields.
    post("unknown-field-booking", BOOKINGS, booking_body(status="confirmed"), "status"),
    post("unknown-field-resource", RESOURCES, resource_body(deleted_at=None), "deleted_at", actor="owner"),
    post("missing-resource-id", BOOKINGS, booking_body(resource_id=DROP), "resource_id"),
    post("missing-ends-at", BOOKINGS, booking_body(ends_at=DROP), "ends_at"),
    post("missing-name", RESOURCES, resource_body(name=DROP), "name", actor="owner"),
    post("empty-object-booking", BOOKINGS, {}, None),
    # Bad UUIDs, in the path and in the body.
    Case("path-uuid-get", "GET", "/v1/bookings/not-a-uuid", ANY_PATH_REJECTION),
    Case("path-uuid-patch", "PATCH", "/v1/bookings/not-a-uuid", ANY_PATH_REJECTION, json={"notes": "x"}),
    Case("path-uuid-cancel", "POST", "/v1/bookings/1234/cancel", ANY_PATH_REJECTION),
    Case("path-uuid-injection", "GET", "/v1/resources/' OR 1=1 --", ANY_PATH_REJECTION),
    Case("path-uuid-availability", "GET", "/v1/resources/not-a-uuid/availability", ANY_PATH_REJECTION,
         params={"from": START, "to": END}),
    post("body-uuid-garbage", BOOKINGS, booking_body(resource_id="not-a-uuid"), "resource_id"),
    post("body-uuid-truncated", BOOKINGS, booking_body(resource_id=UNKNOWN_UUID[:-1]), "resource_id"),
    post("body-uuid-unknown-resource", BOOKINGS, booking_body(resource_id=UNKNOWN_UUID), "resource_id"),
    # Bad dates and intervals.
    post("date-not-a-date", BOOKINGS, booking_body(starts_at="next tuesday"), "starts_at"),
    post("date-without-offset", BOOKINGS, booking_body(starts_at="2030-01-01T10:00:00",
                                                      ends_at="2030-01-01T11:00:00Z"), "starts_at"),
    post("date-february-30", BOOKINGS, booking_body(starts_at="2030-02-30T10:00:00Z"), "starts_at"),
    post("date-hour-25", BOOKINGS, booking_body(ends_at="2030-01-01T25:00:00Z"), "ends_at"),
    post("interval-ends-equal-starts", BOOKINGS, booking_body(ends_at=START), "ends_at"),
    post("interval-ends-before-starts", BOOKINGS, booking_body(ends_at=at(47)), "ends_at"),
    post("interval-in-the-past", BOOKINGS, booking_body(starts_at=at(-3), ends_at=at(-2)), "starts_at"),
    post("interval-over-30-days", BOOKINGS, booking_body(ends_at=at(48 + 30 * 24, 1)), "ends_at"),
    Case("patch-ends-before-starts", "PATCH", f"/v1/bookings/{BOOKING}", 422, "ends_at",
         json={"starts_at": START, "ends_at": at(47)}),
    Case("patch-unknown-field", "PATCH", f"/v1/bookings/{BOOKING}", 422, "seats", json={"seats": 2}),
    # Seats and capacity.
    post("seats-zero", BOOKINGS, booking_body(seats=0), "seats"),
    post("seats-negative", BOOKINGS, booking_body(seats=-1), "seats"),
    post("seats-over-capacity", BOOKINGS, booking_body(seats=TARGET_CAPACITY + 1), "seats"),
    post("seats-10-pow-30", BOOKINGS, booking_body(seats=10**30), "seats"),
    post("capacity-zero", RESOURCES, resource_body(capacity=0), "capacity", actor="owner"),
    post("capacity-negative", RESOURCES, resource_body(capacity=-4), "capacity", actor="owner"),
    post("capacity-huge", RESOURCES, resource_body(capacity=10**30), "capacity", actor="owner"),
    post("price-negative", RESOURCES, resource_body(price_cents=-1), "price_cents", actor="owner"),
    post("currency-lowercase", RESOURCES, resource_body(currency="eur"), "currency", actor="owner"),
    post("currency-word", RESOURCES, resource_body(currency="EURO"), "currency", actor="owner"),
    post("timezone-unknown", RESOURCES, resource_body(timezone="Mars/Olympus"), "timezone", actor="owner"),
    post("timezone-path-traversal", RESOURCES, resource_body(timezone="../../etc/passwd"), "timezone",
         actor="owner"),
    Case("patch-resource-capacity-zero", "PATCH", f"/v1/resources/{RESOURCE}", 422, "capacity", "owner",
         json={"capacity": 0}),
    # Control characters: refused in names, refused in free text except \n and \t.
    post("name-nul", RESOURCES, resource_body(name="Room\x00A"), "name", actor="owner"),
    post("name-newline", RESOURCES, resource_body(name="Room\nA"), "name", actor="owner"),
    post("name-carriage-return", RESOURCES, resource_body(name="Room\rA"), "name", actor="owner"),
    post("name-escape", RESOURCES, resource_body(name="Room \x1b[31mA"), "name", actor="owner"),
    post("kind-tab", RESOURCES, resource_body(kind="room\tsuite"), "kind", actor="owner"),
    post("description-nul", RESOURCES, resource_body(description="Nice\x00room"), "description",
         actor="owner"),
    post("notes-nul", BOOKINGS, booking_body(notes="see\x00you"), "notes"),
    post("notes-carriage-return", BOOKINGS, booking_body(notes="line one\r\nline two"), "notes"),
    Case("patch-notes-nul", "PATCH", f"/v1/bookings/{BOOKING}", 422, "notes", json={"notes": "a\x00b"}),
    # Injection-looking and out-of-range query parameters.
    query("list-status-injection", BOOKINGS, {"status": INJECTION}, 422, "status"),
    query("list-resource-id-injection", BOOKINGS, {"resource_id": INJECTION}, 422, "resource_id"),
    query("list-cursor-garbage", BOOKINGS, {"cursor": "!!not-a-cursor!!"}, 400),
    query("list-cursor-injection", BOOKINGS, {"cursor": INJECTION}, 400),
    query("list-cursor-base64-junk", RESOURCES, {"cursor": "eyJoZWxsbyI6IDF9"}, 400),
    query("list-limit-zero", BOOKINGS, {"limit": "0"}, 422, "limit"),
    query("list-limit-negative", BOOKINGS, {"limit": "-1"}, 422, "limit"),
    query("list-limit-huge", BOOKINGS, {"limit": "100000"}, 422, "limit"),
    query("list-limit-word", RESOURCES, {"limit": "abc"}, 422, "limit"),
    query("list-from-without-offset", BOOKINGS, {"from": "2030-01-01T10:00:00"}, 422, "from"),
    query("list-from-garbage", BOOKINGS, {"from": INJECTION}, 422, "from"),
    query("list-owner-id-garbage", RESOURCES, {"owner_id": INJECTION}, 422, "owner_id"),
    query("availability-from-without-offset", AVAILABILITY, {"from": "2030-01-01T10:00:00", "to": END}, 422,
          "from"),
    query("availability-to-before-from", AVAILABILITY, {"from": END, "to": START}, 422, "to"),
    query("availability-from-garbage", AVAILABILITY, {"from": INJECTION, "to": END}, 422, "from"),
    query("availability-missing-to", AVAILABILITY, {"from": START}, (400, 422), "to"),
    # Oversized bodies: 413.
    raw("body-5-mb", BOOKINGS, padded_booking(5 * MIB), status=413),
    raw("body-1-mib-plus-1", BOOKINGS, padded_booking(MIB + 1), status=413),
    raw("body-1-mib-plus-1-resource", RESOURCES, b'{"name": "' + b"R" * MIB + b'"}', status=413,
        actor="owner"),
    # Idempotency-Key: over 255 characters (the body is otherwise valid).
    post("idempotency-key-256-chars", BOOKINGS, booking_body(), "Idempotency-Key",
         headers={"Idempotency-Key": "k" * 256}),
    post("idempotency-key-resource-1000-chars", RESOURCES, resource_body(), "Idempotency-Key", actor="owner",
         headers={"Idempotency-Key": "k" * 1000}),
    # Registration.
    post("register-password-7-chars", REGISTER, register_body("short", password="1234567"), "password",
         actor="anonymous"),
    post("register-password-1025-chars", REGISTER, register_body("long", password="p" * 1025), "password",
         actor="anonymous"),
    post("register-email-no-at", REGISTER, register_body("x", email="not-an-email"), "email",
         actor="anonymous"),
    post("register-email-spaces", REGISTER, register_body("x", email="bad input@example.test"), "email",
         actor="anonymous"),
    post("register-role-admin", REGISTER, register_body("admin", role="admin"), "role", actor="anonymous"),
    post("register-name-nul", REGISTER, register_body("nul", name="Mal\x00lory"), "name", actor="anonymous"),
    post("register-unknown-field", REGISTER, register_body("unknown", active=True), "active",
         actor="anonymous"),
    post("register-missing-password", REGISTER, register_body("nopw", password=DROP), "password",
         actor="anonymous"),
]


@dataclass
class Targets:
    """Objects that exist before the table runs, for rows that point at them."""

    resource_id: str
    booking_id: str


@dataclass(frozen=True)
class Snapshot:
    """Everything a bad request might wrongly change, as seen through the API."""

    counts: dict[str, int]
    booking: dict[str, Any]
    resource: dict[str, Any]


@pytest.fixture(scope="module")
def targets_by_engine() -> dict[str, Targets]:
    return {}


@pytest.fixture
def targets(server: Server, cast: Cast, targets_by_engine: dict[str, Targets]) -> Targets:
    """A resource of capacity 2 owned by `owner`, and one pending booking of `customer` on it."""
    if server.engine not in targets_by_engine:
        resource = make_resource(cast.owner, name="Bad Input Target", capacity=TARGET_CAPACITY)
        booking = make_booking(cast.customer, resource["id"], start_hours=24 * 20)
        targets_by_engine[server.engine] = Targets(resource["id"], booking["id"])
    return targets_by_engine[server.engine]


def count(actor: Actor, path: str, params: dict[str, str] | None = None) -> int:
    """How many items a list endpoint returns to `actor`, over all pages."""
    total, cursor = 0, None
    while True:
        page_params = {**(params or {}), "limit": "200", **({"cursor": cursor} if cursor else {})}
        answer = actor.http.get(path, params=page_params)
        assert answer.status_code == 200, answer.text
        page = answer.json()
        total += len(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return total


def snapshot(cast: Cast, targets: Targets) -> Snapshot:
    counts = {
        "customer bookings": count(cast.customer, BOOKINGS),
        "owner bookings": count(cast.owner, BOOKINGS),
        "owner resources": count(cast.owner, RESOURCES, {"owner_id": cast.owner.id}),
        "resources the customer sees": count(cast.customer, RESOURCES),
    }
    booking = cast.customer.http.get(f"{BOOKINGS}/{targets.booking_id}")
    resource = cast.owner.http.get(f"{RESOURCES}/{targets.resource_id}")
    assert booking.status_code == 200 and resource.status_code == 200, (booking.text, resource.text)
    return Snapshot(counts, booking.json(), resource.json())


def fill(value: Any, targets: Targets) -> Any:
    """`value` with the RESOURCE and BOOKING placeholders replaced by the targets' ids."""
    if isinstance(value, str):
        return value.replace(RESOURCE, targets.resource_id).replace(BOOKING, targets.booking_id)
    if isinstance(value, dict):
        return {key: fill(item, targets) for key, item in value.items()}
    if isinstance(value, list):
        return [fill(item, targets) for item in value]
    return value


def send(case: Case, server: Server, cast: Cast, targets: Targets) -> httpx.Response:
    """Send the case's request as its actor, with the placeholders filled in."""
    body: dict[str, Any] = {}
    if case.content is not None:
        body["content"] = case.content
    elif case.json is not None:
        body["json"] = fill(case.json, targets)
    path, params = fill(case.path, targets), fill(case.params, targets)
    anonymous = case.actor == "anonymous"
    client: httpx.Client = server.client() if anonymous else getattr(cast, case.actor).http
    try:
        answer: httpx.Response = client.request(case.method, path, params=params, headers=case.headers,
                                                **body)
    finally:
        if anonymous:
            client.close()
    return answer


def assert_refused(answer: httpx.Response, case: Case) -> dict[str, Any]:
    """The answer is a problem document with one of the case's statuses, naming the field if asked."""
    allowed = case.status if isinstance(case.status, tuple) else (case.status,)
    assert answer.status_code in allowed, f"expected {allowed}, got {answer.status_code} {answer.text[:500]}"
    problem: dict[str, Any] = assert_problem(answer, answer.status_code)
    assert "Traceback" not in answer.text, answer.text
    if answer.status_code == 422:
        errors = problem.get("errors")
        assert isinstance(errors, list) and errors, problem
        for error in errors:
            assert isinstance(error.get("field"), str) and error["field"], problem
            assert isinstance(error.get("message"), str) and error["message"], problem
        if case.field is not None:
            assert case.field in [error["field"] for error in errors], problem
    return problem


def assert_not_registered(server: Server, cast: Cast, email: str, password: Any) -> None:
    """No account exists for `email`: signing in fails and the admin's user list lacks it."""
    with server.client() as client:
        sign_in = client.post("/v1/auth/token", json={"email": email, "password": password})
    assert sign_in.status_code in (401, 422), sign_in.text
    emails, cursor = set(), None
    while True:
        params = {"limit": "200", **({"cursor": cursor} if cursor else {})}
        page = cast.admin.http.get("/v1/users", params=params)
        assert page.status_code == 200, page.text
        emails |= {user["email"] for user in page.json()["items"]}
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert email.lower() not in emails


@pytest.mark.parametrize("case", [pytest.param(case, id=case.id) for case in CASES])
def test_bad_input_is_refused_and_changes_nothing(
    case: Case, server: Server, cast: Cast, targets: Targets
) -> None:
    before = snapshot(cast, targets)
    answer = send(case, server, cast, targets)
    assert_refused(answer, case)
    assert snapshot(cast, targets) == before
    if case.registers:
        assert_not_registered(server, cast, case.registers, case.json.get("password", "password-123"))


def test_the_table_is_big_and_ids_are_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) >= 45
    assert len(set(ids)) == len(ids), sorted(i for i in ids if ids.count(i) > 1)


def test_newlines_and_tabs_are_accepted_in_notes_and_description(server: Server, cast: Cast) -> None:
    description = "First floor.\n\tWhiteboard\tand projector.\n"
    resource = make_resource(cast.owner, name="Free Text Room", description=description)
    assert resource["description"] == description
    notes = "Arriving late:\n\t- parking at the back\n\t- door code 1234"
    booking = make_booking(cast.customer, resource["id"], start_hours=72, notes=notes)
    assert booking["notes"] == notes
    fetched = cast.customer.http.get(f"{BOOKINGS}/{booking['id']}").json()
    assert fetched["notes"] == notes
    patched = cast.customer.http.patch(f"{BOOKINGS}/{booking['id']}", json={"notes": "a\nb\tc"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["notes"] == "a\nb\tc"
