"""Shared fixtures; the daemon harness itself lives in tests/harness.py."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _model_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Trained example weights go to one cache per test session, never the user's home."""
    os.environ.setdefault("SERVD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
