"""The structure follows the flow: `workers/` is a thin entry layer over `app/`, and `app/` has no
import cycle. The contracts are import-linter's, in pyproject.toml (`[tool.importlinter]`)."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

from rq.utils import import_attribute

from app import cli
from app.job_queue import JOB_NAMES
from workers import commands, jobs

REPO = Path(__file__).resolve().parents[2]


def test_app_never_imports_workers_and_has_no_import_cycle() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                               "sys.exit(lint_imports(no_cache=True, no_logo=True))"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout, done.stdout


def test_every_job_name_is_an_entry_point_of_workers_jobs() -> None:
    defined = {f"workers.jobs.{name}" for name, value in vars(jobs).items()
               if inspect.isfunction(value) and value.__module__ == "workers.jobs"}
    assert set(JOB_NAMES) == defined
    for name in JOB_NAMES:
        assert callable(import_attribute(name))  # how RQ finds the job when it runs it


def test_the_cli_starts_the_worker_and_scheduler_commands_of_workers() -> None:
    source = inspect.getsource(cli.worker) + inspect.getsource(cli.scheduler)
    assert "commands.worker(settings)" in source and "commands.scheduler(settings)" in source
    assert callable(commands.worker) and callable(commands.scheduler)
