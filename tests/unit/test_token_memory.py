"""TokenCodec remembers verified tokens (app/security.py): the memory must never outlive a token's
`exp`, never hold a token that failed, and stay bounded."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from app import security
from app.errors import Unauthorized
from app.security import TokenCodec
from app.settings import load_settings


@pytest.fixture
def codec(tmp_path: Path) -> TokenCodec:
    return TokenCodec(load_settings({"DATA_DIR": str(tmp_path), "JWT_SECRET": "x" * 48}))


def test_a_remembered_token_is_refused_once_it_expires(codec: TokenCodec) -> None:
    token = codec.mint(uuid.uuid4(), "customer", 1)
    first = codec.decode(token)
    assert codec.decode(token) is first  # remembered: not verified again
    time.sleep(max(0.0, first["exp"] - time.time()) + 0.05)
    with pytest.raises(Unauthorized, match="expired"):
        codec.decode(token)
    with pytest.raises(Unauthorized, match="expired"):  # and forgotten, then refused by PyJWT itself
        codec.decode(token)


def test_a_refused_token_is_not_remembered(codec: TokenCodec) -> None:
    token = codec.mint(uuid.uuid4(), "customer", 60)
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    for _ in range(2):
        with pytest.raises(Unauthorized, match="invalid"):
            codec.decode(tampered)
    assert tampered not in codec._verified


def test_the_memory_is_bounded(codec: TokenCodec, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(security, "VERIFIED_TOKENS_KEPT", 3)
    tokens = [codec.mint(uuid.uuid4(), "customer", 60) for _ in range(5)]
    for token in tokens[:3]:
        codec.decode(token)
    codec.decode(tokens[0])  # used again: now the most recent
    for token in tokens[3:]:
        codec.decode(token)
    assert list(codec._verified) == [tokens[0], tokens[3], tokens[4]]


def test_stream_tokens_are_not_remembered(codec: TokenCodec) -> None:
    token = codec.stream_token(uuid.uuid4(), "customer")
    codec.decode(token)
    assert token not in codec._verified  # one per connection: 10,000 streams must not keep 10,000 tokens
