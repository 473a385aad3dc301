"""`make serve PORT=... HOST=...` passes --port/--host to `servd run`; nothing else moves the daemon.

`make -n` prints the command without running it, and `-o` skips the install step, so these
tests cost nothing; tests/test_readme_example.py runs `make serve PORT=...` for real.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.procs import REPO

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def make_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment without an outer make's flags and variables (the suite runs under `make test`)."""
    outer = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")
    return {k: v for k, v in (os.environ if base is None else base).items() if k not in outer}


def serve_command(*variables: str, **environment: str) -> str:
    """The command `make serve` would run, with make variables given on its command line."""
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "-o", ".venv/bin/.installed", "serve", *variables],
        cwd=REPO, env=make_env() | environment, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return result.stdout.strip()


def test_make_serve_runs_the_default_config_as_it_is():
    assert serve_command() == ".venv/bin/servd run servd.yaml"


def test_make_serve_passes_port_and_host():
    """PORT and HOST on make's command line override server.port and server.host."""
    assert serve_command("PORT=8711") == ".venv/bin/servd run servd.yaml --port 8711"
    assert serve_command("HOST=0.0.0.0", "PORT=0") == ".venv/bin/servd run servd.yaml --host 0.0.0.0 --port 0"


def test_port_and_host_from_the_environment_are_ignored():
    """A PORT or HOST exported for other tools must not move the daemon (onto the network, say)."""
    assert serve_command(PORT="3000", HOST="0.0.0.0") == ".venv/bin/servd run servd.yaml"


def test_an_empty_port_is_no_option():
    assert serve_command("PORT=", "HOST=") == ".venv/bin/servd run servd.yaml"
