"""MAX_STREAMS_PER_USER and MAX_REQUEST_HEADER_BYTES: defaults, and bad values named at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import SettingsError, load_settings

BASE = {"JWT_SECRET": "s" * 40, "REDIS_URL": "redis://127.0.0.1:6379/0"}


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings({**BASE, "DATA_DIR": str(tmp_path)})
    assert settings.max_streams_per_user == 20
    assert settings.max_request_header_bytes == 32768


def test_values_are_read(tmp_path: Path) -> None:
    settings = load_settings({**BASE, "DATA_DIR": str(tmp_path), "MAX_STREAMS_PER_USER": "3",
                              "MAX_REQUEST_HEADER_BYTES": "8192"})
    assert (settings.max_streams_per_user, settings.max_request_header_bytes) == (3, 8192)


@pytest.mark.parametrize(("name", "value"), [("MAX_STREAMS_PER_USER", "0"), ("MAX_STREAMS_PER_USER", "many"),
                                             ("MAX_REQUEST_HEADER_BYTES", "100"),
                                             ("MAX_REQUEST_HEADER_BYTES", "16k")])
def test_bad_values_name_the_variable(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings({**BASE, "DATA_DIR": str(tmp_path), name: value})
