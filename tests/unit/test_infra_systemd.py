"""infra/systemd/: the units parse, raise the open-file limit, and run the migrations once (a oneshot
that every api@ instance requires and starts after, instead of an ExecStartPre per instance).
`systemd-analyze verify` checks them too where it is installed (it warns about unknown keys and
fails on a missing executable, so the units' /opt path is pointed at this checkout's `bookwire`)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[2] / "infra" / "systemd"
INSTALLED_BOOKWIRE = "/opt/bookwire/.venv/bin/bookwire"


def unit(name: str) -> configparser.ConfigParser:
    # strict=False: systemd allows a key more than once (After= lines add up); the last one is read.
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(SYSTEMD / name)
    return parser


def values(name: str, section: str, key: str) -> list[str]:
    """Every value of `key` in `section`, the words of repeated keys joined (as systemd does)."""
    words: list[str] = []
    for line in (SYSTEMD / name).read_text().split(f"[{section}]", 1)[1].split("\n[", 1)[0].splitlines():
        if line.startswith(f"{key}="):
            words += line.split("=", 1)[1].split()
    return words


UNITS = ["bookwire-api@.service", "bookwire-migrate.service", "bookwire-worker@.service",
         "bookwire-scheduler.service"]


def test_the_units_are_there_and_parse() -> None:
    assert sorted(path.name for path in SYSTEMD.glob("*.service")) == sorted(UNITS)
    for name in UNITS:
        parsed = unit(name)
        assert parsed["Service"]["ExecStart"].startswith(INSTALLED_BOOKWIRE), name
        assert parsed["Service"]["User"] == "bookwire", name


def test_migrations_run_once_before_the_apis() -> None:
    migrate = unit("bookwire-migrate.service")["Service"]
    assert migrate["Type"] == "oneshot" and migrate["RemainAfterExit"] == "yes"
    assert migrate["ExecStart"] == f"{INSTALLED_BOOKWIRE} migrate"
    api = unit("bookwire-api@.service")["Service"]
    assert "ExecStartPre" not in api and "migrate" not in api["ExecStart"]
    assert "bookwire-migrate.service" in values("bookwire-api@.service", "Unit", "Requires")
    assert "bookwire-migrate.service" in values("bookwire-api@.service", "Unit", "After")
    for name in ("bookwire-worker@.service", "bookwire-scheduler.service"):
        assert "bookwire-migrate.service" in values(name, "Unit", "After"), name


@pytest.mark.parametrize("name", ["bookwire-api@.service", "bookwire-worker@.service", "bookwire-scheduler.service"])
def test_long_running_units_raise_the_open_file_limit(name: str) -> None:
    service = unit(name)["Service"]
    assert int(service["LimitNOFILE"]) >= 65536
    assert service["Restart"] == "always"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    here = str(Path(sys.executable).parent / "bookwire")
    for name in UNITS:
        (tmp_path / name).write_text((SYSTEMD / name).read_text().replace(INSTALLED_BOOKWIRE, here))
    # Instances of the templates, as `systemctl enable bookwire-api@8001` makes them.
    targets = [str(tmp_path / name.replace("@.", "@8001.")) for name in UNITS]
    for name in UNITS:
        if "@." in name:
            (tmp_path / name.replace("@.", "@8001.")).symlink_to(tmp_path / name)
    result = subprocess.run([analyze, "verify", "--man=no", *targets], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stdout + result.stderr
