"""`bookwire migrate` says one true thing: what it applied, or that the database is up to date."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import bookwire_env, fresh_database

MIGRATIONS = len(list((Path(__file__).parents[2] / "app" / "db" / "piccolo_migrations").glob("bookwire_*.py")))


def run_migrate(data_dir: Path, database_url: str) -> str:
    done = subprocess.run([sys.executable, "-m", "app.cli", "migrate"], capture_output=True, text=True, timeout=120,
                          env=bookwire_env(DATA_DIR=str(data_dir), DATABASE_URL=database_url))
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_migrate_on_a_fresh_database_says_what_it_applied_then_up_to_date(tmp_path: Path, engine: str) -> None:
    with fresh_database(engine, tmp_path) as database_url:
        first = run_migrate(tmp_path, database_url)
        assert first.strip().splitlines() == [
            f"Database {database_url}: applied {MIGRATIONS} migration{'s' if MIGRATIONS != 1 else ''}"], first
        again = run_migrate(tmp_path, database_url)
        assert again.strip().splitlines() == [f"Database {database_url}: up to date"], again


def test_migrate_never_prints_a_database_password(tmp_path: Path) -> None:
    with fresh_database("postgres", tmp_path) as database_url:
        scheme, _, rest = database_url.partition("://")
        user, _, host = rest.partition("@")
        secret_url = f"{scheme}://{user.split(':')[0]}:not-the-password@{host}"
        done = subprocess.run([sys.executable, "-m", "app.cli", "migrate"], capture_output=True, text=True,
                              timeout=120, env=bookwire_env(DATA_DIR=str(tmp_path), DATABASE_URL=secret_url))
        output = done.stdout + done.stderr
        if done.returncode != 0:
            pytest.skip("this PostgreSQL checks passwords; the test needs one that trusts local connections")
        assert "not-the-password" not in output and ":***@" in output, output
