"""`servd run` as an operator runs it: a real process in its own process group, on a port it picks.

    with running(tmp_path, CONFIG) as daemon:
        reply = http(daemon.port, "POST", "/v1/endpoints/echo", {"data": 1})

The daemon is started with `--port 0` and says where it listens in its JSON "listening" log event
(its output is not a TTY, so its logs are JSON lines in tmp_path/servd.log); the port is read from
there, so no test picks a free port and then races other processes to bind it. `running` yields
once /readyz answers 200, and kills the whole process group afterwards whatever the test did.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.harness import PROCESS_WAIT_S, eventually_sync

REPO = Path(__file__).resolve().parent.parent
WAIT_S = PROCESS_WAIT_S  # generous: the machine is shared and slow; no test depends on speed
LOG = "servd.log"


def env() -> dict[str, str]:
    """The test's environment, with the repository importable and no systemd to talk to."""
    out = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return out


@dataclass
class Reply:
    status: int
    body: Any


def http(port: int, method: str, path: str, body: Any = None, timeout: float = WAIT_S) -> Reply:
    """One blocking request to 127.0.0.1:`port`; the body as JSON when it parses, else as text."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return Reply(status, json.loads(raw))
    except ValueError:
        return Reply(status, raw.decode(errors="replace"))


def log_events(log: Path) -> list[dict[str, Any]]:
    """The JSON lines of a daemon's log (other lines, such as tracebacks, are left out)."""
    events = []
    for line in log.read_text("utf-8", errors="replace").splitlines():
        with suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return events


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        assert port is not None, self.url
        return port

    def log_events(self) -> list[dict[str, Any]]:
        return log_events(self.log)

    def stats(self, endpoint: str) -> dict[str, Any]:
        listing = http(self.port, "GET", "/v1/endpoints").body["endpoints"]
        return next(e["stats"] for e in listing if e["name"] == endpoint)

    def in_background(self, path: str, body: Any) -> Callable[[], Reply | BaseException]:
        """POST in a thread; the returned function joins it and gives its reply (or exception)."""
        box: list[Reply | BaseException] = []

        def post() -> None:
            try:
                box.append(http(self.port, "POST", path, body))
            except BaseException as exc:  # noqa: BLE001 - handed to the test to assert on
                box.append(exc)

        thread = threading.Thread(target=post, daemon=True)
        thread.start()

        def result() -> Reply | BaseException:
            thread.join(WAIT_S)
            assert box, "the background request never returned"
            return box[0]

        return result


def start(tmp_path: Path, config: str, **popen: Any) -> subprocess.Popen[bytes]:
    """`servd run servd.yaml --port 0` in `tmp_path`, in its own process group, its output in servd.log.

    `popen` goes to subprocess.Popen as is (env=, preexec_fn=); env defaults to `env()`.
    """
    (tmp_path / "servd.yaml").write_text(config, "utf-8")
    popen.setdefault("env", env())
    with (tmp_path / LOG).open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "servd", "run", "servd.yaml", "--port", "0"],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **popen,
        )


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(WAIT_S)


def listening_url(proc: subprocess.Popen[bytes], log: Path) -> str:
    """The URL in the daemon's "listening" log event, once it is there; fails if the process exits first."""

    def url() -> str:
        listening = [str(e["url"]) for e in log_events(log) if e.get("event") == "listening"]
        if not listening:
            assert proc.poll() is None, f"servd exited with {proc.returncode} before listening:\n{log.read_text()}"
        return listening[0] if listening else ""

    return eventually_sync(url, 'the "listening" log event')


@contextmanager
def listening(tmp_path: Path, config: str, **popen: Any) -> Iterator[Running]:
    """`servd run` on a port of its choosing, once it listens (its models may still be loading)."""
    proc = start(tmp_path, config, **popen)
    try:
        yield Running(proc, listening_url(proc, tmp_path / LOG), tmp_path / LOG)
    finally:
        kill_group(proc)


@contextmanager
def running(tmp_path: Path, config: str, **popen: Any) -> Iterator[Running]:
    """`servd run` on a port of its choosing, ready (/readyz 200) before the body runs; killed afterwards."""
    with listening(tmp_path, config, **popen) as daemon:

        def readyz() -> int | None:
            assert daemon.proc.poll() is None, f"servd exited with {daemon.proc.returncode}:\n{daemon.log.read_text()}"
            with suppress(OSError):
                return http(daemon.port, "GET", "/readyz", timeout=5).status
            return None

        eventually_sync(readyz, "/readyz to answer 200", until=lambda status: status == 200)
        yield daemon


@contextmanager
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 where nothing listens, held (bound, never listening) so nothing else can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
