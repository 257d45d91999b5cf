"""infra/compose.yaml: valid against the Compose Specification's schema (check-jsonschema ships it),
and wired as a deployment must be: migrations once, before anything else of Bookwire starts; two API
processes behind nginx with the shipped site; a worker and a scheduler. `docker compose config` (or
the older `docker-compose config`) runs too when either is on PATH."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"
COMPOSE = INFRA / "compose.yaml"


def services() -> dict[str, dict[str, Any]]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # resolves the `<<:` merges
    result: dict[str, dict[str, Any]] = loaded["services"]
    return result


def bookwire_services() -> dict[str, dict[str, Any]]:
    """The services that run the Bookwire image, by name."""
    return {name: s for name, s in services().items() if s.get("build", {}).get("dockerfile") == "infra/Dockerfile"}


def schema_check(path: Path) -> subprocess.CompletedProcess[str]:
    check = Path(sys.executable).parent / "check-jsonschema"
    return subprocess.run([str(check), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_valid_against_the_compose_schema(tmp_path: Path) -> None:
    result = schema_check(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "compose.yaml"  # the check is not vacuous: a wrong condition fails it
    broken.write_text(COMPOSE.read_text().replace("service_completed_successfully", "service_finished"))
    assert schema_check(broken).returncode != 0


def test_migrations_run_once_before_the_rest() -> None:
    ours = bookwire_services()
    migrate = [name for name, s in ours.items() if s["command"] == ["migrate"]]
    assert migrate == ["migrate"], migrate
    assert ours["migrate"]["restart"] == "no"
    for name, service in ours.items():
        assert "migrate" not in service.get("entrypoint", []), name
        if name != "migrate":
            assert service["command"] != ["migrate"]
            assert service["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}, name
            assert service["depends_on"]["postgres"] == {"condition": "service_healthy"}, name


def test_two_apis_a_worker_and_a_scheduler() -> None:
    commands = sorted(s["command"][0] for name, s in bookwire_services().items() if name != "migrate")
    assert commands == ["api", "api", "scheduler", "worker"], commands
    for name, service in bookwire_services().items():
        if service["command"] != ["api"]:  # no /health to answer: the image's HEALTHCHECK is off
            assert service["healthcheck"] == {"disable": True}, name
        environment = service["environment"]
        assert environment["DATABASE_URL"].startswith("postgresql://") and "@postgres:" in environment["DATABASE_URL"]
        assert environment["REDIS_URL"].startswith("redis://redis:")
        assert ":?" in environment["JWT_SECRET"], "no default JWT secret"


def test_nginx_fronts_both_apis_with_the_shipped_site() -> None:
    nginx = services()["nginx"]
    mounts = dict(volume.rsplit(":", 1)[0].split(":", 1) for volume in nginx["volumes"])
    assert mounts["./nginx/bookwire.conf"] == "/etc/nginx/conf.d/default.conf"
    assert mounts["./nginx/upstreams.conf"] == "/etc/nginx/bookwire/upstreams.conf"
    for source in mounts:
        assert (INFRA / source).is_file(), source
    apis = sorted(name for name, s in bookwire_services().items() if s["command"] == ["api"])
    upstreams = re.findall(r"^server (\S+):8000 ", (INFRA / "nginx" / "upstreams.conf").read_text(), re.MULTILINE)
    assert sorted(upstreams) == apis
    assert {name: c["condition"] for name, c in nginx["depends_on"].items()} == dict.fromkeys(apis, "service_healthy")


def test_compose_config_when_a_compose_cli_is_here() -> None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        command = ["docker", "compose"]
    elif shutil.which("docker-compose"):
        command = ["docker-compose"]
    else:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    env = {**os.environ, "JWT_SECRET": "x" * 40}
    result = subprocess.run([*command, "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    env.pop("JWT_SECRET")  # required: compose refuses to start without one
    assert subprocess.run([*command, "-f", str(COMPOSE), "config", "--quiet"], capture_output=True,
                          env=env, timeout=60).returncode != 0
