"""The docs' Python client example runs as written, against `make serve` and the shipped servd.yaml.

The code is read from the client's page itself (the first python block of docs/client.md), so the
example can't rot. Only its port is changed: the daemon is started the docs' way, `make serve PORT=0`,
and the port it took is read from its "listening" log event. make's install step is skipped
(`-o`): the test's own environment is the install.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.harness import eventually_sync
from tests.procs import REPO, WAIT_S, env, http, kill_group, listening_url
from tests.test_makefile import make_env

CLIENT_PAGE = (REPO / "docs" / "client.md").read_text("utf-8")
DEFAULT_PORT = "8700"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def client_example() -> str:
    match = re.search(r"^```python\n(.*?)^```$", CLIENT_PAGE, re.S | re.M)
    assert match, "docs/client.md has no python block"
    return match.group(1)


@contextmanager
def make_serve(log: Path) -> Iterator[int]:
    """`make serve PORT=0` with the test's interpreter as the install; its port once ready. Killed afterwards."""
    bin_dir = Path(sys.executable).parent
    command = ["make", "--no-print-directory", "-o", f"{bin_dir}/.installed", "serve", f"BIN={bin_dir}", "PORT=0"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=REPO, env=make_env(env()), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        port = urlsplit(listening_url(proc, log)).port
        assert port

        def readyz() -> int | None:
            assert proc.poll() is None, f"make serve exited with {proc.returncode}:\n{log.read_text()}"
            with suppress(OSError):
                return http(port, "GET", "/readyz", timeout=5).status
            return None

        eventually_sync(readyz, "/readyz to answer 200 (classify trains on first start)", until=lambda s: s == 200)
        yield port
    finally:
        kill_group(proc)


def test_the_python_client_example_runs_against_the_default_config(tmp_path):
    """Every line of the example works: classify gets a real digit (a 0), words streams word by word."""
    code = client_example()
    assert DEFAULT_PORT in code
    with make_serve(tmp_path / "make.log") as port:
        result = subprocess.run(
            [sys.executable, "-c", code.replace(DEFAULT_PORT, str(port))],
            cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=WAIT_S, check=False,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"\{'label': 0, 'confidence': [01]\.\d+\}", lines[0]), lines
    assert re.fullmatch(r"\{'queue_s': .*, 'run_s': .*, 'batch_size': 1\}", lines[1]), lines
    assert lines[2:] == ["one", "one two", "one two three"]  # no QueueFull or Timeout printed
    assert "servd run servd.yaml --port 0\n" in (tmp_path / "make.log").read_text()
