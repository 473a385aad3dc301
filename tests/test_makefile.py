"""`make serve PORT=... HOST=...` passes --port/--host to `servd run`; nothing else moves the daemon.
`make serve` installs the runtime only; `make test` adds the test extra under its own stamp and
builds the docs strictly; `make docs` serves them.

`make -n` prints the command without running it, and `-o` skips the install step, so these
tests cost nothing; tests/test_readme_example.py runs `make serve PORT=...` for real.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

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


def dry_run(target: str, venv: Path) -> list[str]:
    """The commands `make TARGET` would run on a machine whose venv is `venv` (absent: a fresh one)."""
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", target, f"VENV={venv}", f"BIN={venv}/bin"],
        cwd=REPO, env=make_env(), capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return result.stdout.strip().splitlines()


def installs(commands: list[str]) -> list[str]:
    """What each `pip install` among the commands installs, in order."""
    return [c.split("pip install", 1)[1].split()[-1] for c in commands if "pip install" in c]


def test_make_serve_installs_the_runtime_only(tmp_path):
    """On a fresh machine `make serve` installs torch (pinned, first), then servd with the examples'
    one extra dependency, and serves: no pytest, ruff, mypy, Ray or official clients (a 1.7 GB venv)."""
    commands = dry_run("serve", tmp_path / "venv")
    assert installs(commands) == ["torch==2.13.0", "'.[examples]'"]
    assert commands[-1] == f"{tmp_path}/venv/bin/servd run servd.yaml"


def test_make_test_installs_the_test_extra_under_its_own_stamp(tmp_path):
    """`make test` installs the runtime as serve does, then the test extra with a stamp of its own, then
    lints, builds the docs strictly and runs the suite; a serving machine's stamp doesn't satisfy it."""
    venv = tmp_path / "venv"
    commands = dry_run("test", venv)
    assert installs(commands) == ["torch==2.13.0", "'.[examples]'", "'.[test]'"]
    assert f"touch {venv}/bin/.installed-test" in commands
    assert commands[-2:] == [f"{venv}/bin/mkdocs build --strict", f"{venv}/bin/python -m pytest"]
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / ".installed").touch()  # `make serve` ran here before
    assert installs(dry_run("test", venv)) == ["'.[test]'"]
    assert installs(dry_run("serve", venv)) == []


def test_make_docs_serves_the_site_on_the_loopback(tmp_path):
    """`make docs` installs MkDocs (the docs extra, not the test extra) and serves the site on 127.0.0.1:8000."""
    commands = dry_run("docs", tmp_path / "venv")
    assert installs(commands) == ["torch==2.13.0", "'.[examples]'", "'.[docs]'"]
    assert commands[-1] == f"{tmp_path}/venv/bin/mkdocs serve -a 127.0.0.1:8000"
