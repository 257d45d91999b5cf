"""A client generated from the OpenAPI document by openapi-python-client drives a booking through
its life, and its errors come back as the typed `Problem` model.

The generator is not in the test extras (see docs/decisions.md, "API description"): this test runs
where `openapi-python-client` is on PATH, beside the venv's python, or named by OPENAPI_PYTHON_CLIENT,
and skips otherwise. Generating takes about 2 s."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Server, at


def generator() -> str | None:
    beside = Path(sys.executable).parent / "openapi-python-client"
    return os.environ.get("OPENAPI_PYTHON_CLIENT") or shutil.which("openapi-python-client") or (
        str(beside) if beside.exists() else None)


@pytest.fixture
def client_package(server: Server, tmp_path: Path) -> Any:
    command = generator()
    if command is None:
        pytest.skip("openapi-python-client is not installed (pip install openapi-python-client)")
    document = tmp_path / "openapi.json"
    document.write_bytes(httpx.get(f"{server.base_url}/schema/openapi.json").content)
    config = tmp_path / "config.yaml"
    config.write_text("package_name_override: bookwire_client\npost_hooks: []\n")
    done = subprocess.run([command, "generate", "--path", str(document), "--meta", "none", "--config", str(config),
                           "--output-path", str(tmp_path / "bookwire_client")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Unable to" not in done.stdout, done.stdout  # every schema and operation made it into the client
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module("bookwire_client")
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == "bookwire_client" or m.startswith("bookwire_client.")]:
            del sys.modules[name]


def test_generated_client_books_confirms_checks_in_completes_and_types_its_errors(
        server: Server, client_package: Any) -> None:
    models = importlib.import_module("bookwire_client.models")

    def endpoint(name: str) -> Any:  # one module per operation, by tag: api/<tag>/<operation>.py
        return importlib.import_module(f"bookwire_client.api.{name}")

    anonymous = client_package.Client(base_url=server.base_url)

    def sign_up(role: str) -> Any:
        body = models.RegisterRequest(email=f"{role}-{uuid.uuid4().hex[:10]}@example.test", password="password-123",
                                      name=f"Generated {role}", role=models.RegisterRequestRole(role))
        answer = endpoint("auth.register").sync(client=anonymous, body=body)
        assert isinstance(answer, models.RegisterResponse), answer
        return client_package.AuthenticatedClient(base_url=server.base_url, token=answer.access_token)

    provider, customer = sign_up("provider"), sign_up("customer")
    room = endpoint("resources.create_resource").sync(client=provider, body=models.ResourceCreate(name="Room G"))
    assert isinstance(room, models.ResourceRead), room
    booking = endpoint("bookings.create_booking").sync(client=customer, body=models.BookingCreate.from_dict(
        {"resource_id": str(room.id), "starts_at": at(30), "ends_at": at(31)}))
    assert isinstance(booking, models.BookingRead), booking
    assert booking.status == models.BookingReadStatus.PENDING

    # Still pending: completing it is a 409, which comes back as the Problem model.
    too_early = endpoint("bookings.complete_booking").sync(booking.id, client=provider, body=models.ActionRequest())
    assert isinstance(too_early, models.Problem), too_early
    assert too_early.status == 409 and too_early.current_status == models.ProblemCurrentStatus.PENDING

    for action, status in (("confirm_booking", "confirmed"), ("check_in_booking", "checked_in"),
                           ("complete_booking", "completed")):
        booking = endpoint(f"bookings.{action}").sync(booking.id, client=provider, body=models.ActionRequest())
        assert isinstance(booking, models.BookingRead), booking
        assert booking.status.value == status

    invalid = endpoint("resources.create_resource").sync_detailed(client=provider, body=models.ResourceCreate.from_dict(
        {"name": "Room", "capacity": 0}))
    assert invalid.status_code == 422
    assert isinstance(invalid.parsed, models.Problem)
    assert [e.field for e in invalid.parsed.errors] == ["capacity"]
    assert all(isinstance(e, models.FieldError) for e in invalid.parsed.errors)
