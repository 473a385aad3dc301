"""Shared fixtures; the daemon harness itself lives in tests/harness.py."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from examples import versioned


@pytest.fixture(autouse=True)
def _model_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Trained example weights go to one cache per test session, never the user's home."""
    os.environ.setdefault("SERVD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def gates() -> Iterator[Callable[[], str]]:
    """Make unique gate names (examples.versioned: calls naming one wait until it opens); every
    gate is opened at the end so no worker stays blocked."""
    made: list[str] = []

    def make() -> str:
        name = f"gate-{uuid.uuid4().hex}"
        made.append(name)
        return name

    yield make
    for name in made:
        versioned.open_gate(name)
