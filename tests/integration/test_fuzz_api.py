"""Fuzz every operation of the OpenAPI document against a live API, with schemathesis.

For each operation, as each kind of caller (no token, a customer, a provider, an admin), with
requests that fit the schema and requests that do not: no answer is a 5xx, and every error is an
`application/problem+json` document. Hypothesis runs derandomized (the same examples on every run)
with a fixed number of examples per operation, so the run is bounded and never flaky.

The event stream is not in the fuzz (it holds the connection open by design); the long-poll is,
with `timeout=0` forced so that it answers at once.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from conftest import Cast, Server
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

EXAMPLES = 6
"""Examples per operation, caller and mode: 40 operations, 4 callers, 2 modes: about 1,800 requests."""
HASHING = {"/v1/auth/register", "/v1/auth/token"}
"""Operations whose valid requests hash a password (seconds each here): only invalid requests are
fuzzed; tests/integration/test_auth.py covers the valid ones."""
NOT_FUZZED = {"/v1/events/stream"}


def _problems(case: schemathesis.Case, response: schemathesis.Response) -> list[str]:
    found = []
    request = f"{case.method} {case.formatted_path} query={case.query} body={str(case.body)[:300]!r}"
    if response.status_code >= 500:
        found.append(f"{response.status_code} for {request}: {response.text[:300]}")
    if response.status_code >= 400:
        content_type = (response.headers.get("content-type") or [""])[0]
        if not content_type.startswith("application/problem+json"):
            found.append(f"{response.status_code} is {content_type!r}, not a problem document, for {request}")
    return found


def fuzz_operation(operation: Any, mode: GenerationMode, base_url: str, headers: dict[str, str]) -> None:
    """Run one operation's examples; fail with the offending request."""
    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None, print_blob=False,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        if operation.path == "/v1/events/poll":
            case.query = {**(case.query or {}), "timeout": 0}  # answer at once: the run stays bounded
        response = case.call(base_url=base_url, headers=headers, timeout=15)
        problems = _problems(case, response)
        assert not problems, "\n".join(problems)

    run()


@pytest.mark.parametrize("caller", ["anonymous", "customer", "owner", "admin"])  # owner: a provider
def test_fuzzed_requests_get_no_5xx_and_only_problem_documents(server: Server, cast: Cast, caller: str) -> None:
    schema = schemathesis.openapi.from_url(f"{server.base_url}/schema/openapi.json")
    headers = {} if caller == "anonymous" else {"Authorization": f"Bearer {getattr(cast, caller).token}"}
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in NOT_FUZZED:
            continue
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if mode is GenerationMode.POSITIVE and operation.path in HASHING:
                continue
            try:
                fuzz_operation(operation, mode, server.base_url, headers)
            except Unsatisfiable:  # nothing to get wrong (no parameters, no body): no negative examples
                continue
            except AssertionError as exc:
                failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {exc}")
    assert operations >= 30, "the OpenAPI document lost operations"
    assert not failures, "\n\n".join(failures)
