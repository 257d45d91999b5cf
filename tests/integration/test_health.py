"""Probes and the OpenAPI schema."""

from conftest import Server, assert_problem


def test_health_answers_ok(server: Server) -> None:
    with server.client() as client:
        assert client.get("/health").json() == {"status": "ok"}


def test_ready_checks_database_redis_and_scheduler(server: Server) -> None:
    with server.client() as client:
        answer = client.get("/ready")
    assert answer.status_code == 200, answer.text
    assert answer.json()["checks"] == {"database": True, "redis": True, "scheduler": True}


def test_schema_is_served_as_json_and_ui(server: Server) -> None:
    with server.client() as client:
        schema = client.get("/schema/openapi.json")
        ui = client.get("/schema")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/v1/bookings" in paths and "/v1/resources/{resource_id}/availability" in paths
    assert ui.status_code == 200 and "text/html" in ui.headers["content-type"]


def test_unknown_url_and_wrong_method_are_problem_documents(server: Server) -> None:
    with server.client() as client:
        assert_problem(client.get("/v1/nothing-here"), 404)
        assert_problem(client.delete("/health"), 405)
