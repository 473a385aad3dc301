"""The `servd` command as an operator runs it: a real process, its exit codes, output and signals.

`servd run` is started in its own process group on a port picked here, and the group is always
killed at the end, whatever the test did. Readiness is /readyz answering 200; nothing waits a
fixed time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import servd

REPO = Path(__file__).resolve().parent.parent
WAIT_S = 60.0  # generous: the machine is shared and slow; no test depends on speed


def env() -> dict[str, str]:
    """The test's environment, with the repository importable and no systemd to talk to."""
    out = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return out


def servd_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "servd", *args],
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    """Poll `condition` until it returns something truthy; bounded in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Reply:
    status: int
    body: Any


def http(port: int, method: str, path: str, body: Any = None, timeout: float = WAIT_S) -> Reply:
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


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def log_events(self) -> list[dict[str, Any]]:
        """The daemon's JSON log lines (its stderr is not a TTY, so logs are JSON)."""
        events = []
        for line in self.log.read_text("utf-8", errors="replace").splitlines():
            with suppress(ValueError):
                events.append(json.loads(line))
        return events

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


def start(tmp_path: Path, config: str, port: int) -> subprocess.Popen[bytes]:
    (tmp_path / "servd.yaml").write_text(config, "utf-8")
    log = (tmp_path / "servd.log").open("wb")
    with log:
        return subprocess.Popen(
            [sys.executable, "-m", "servd", "run", "servd.yaml", "--port", str(port)],
            cwd=tmp_path,
            env=env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(WAIT_S)


@contextmanager
def running(tmp_path: Path, config: str) -> Iterator[Running]:
    """`servd run` on a free port, ready (/readyz 200) before the body runs; killed afterwards."""
    port = free_port()
    proc = start(tmp_path, config, port)
    daemon = Running(proc, port, tmp_path / "servd.log")
    try:

        def ready() -> bool:
            assert proc.poll() is None, f"servd exited with {proc.returncode}:\n{daemon.log.read_text()}"
            with suppress(OSError):
                return http(port, "GET", "/readyz", timeout=5).status == 200
            return False

        wait_for(ready, "/readyz to answer 200")
        yield daemon
    finally:
        kill_group(proc)


SERVE = """\
version: 1
server:
  drain_timeout_s: 60
endpoints:
  echo:
    entrypoint: examples.echo:echo
  sleep:
    entrypoint: examples.faults:sleep
"""


# -- version, schema, check ----------------------------------------------------------------


def test_version_prints_the_package_version():
    """`servd --version` prints the version and exits 0."""
    result = servd_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"servd {servd.__version__}"


def test_no_command_prints_usage_and_exits_2():
    """`servd` alone shows the commands and fails like any usage error."""
    result = servd_cli()
    assert result.returncode == 2
    assert "run" in result.stdout and "check" in result.stdout and "schema" in result.stdout


def test_schema_prints_the_json_schema():
    """`servd schema` prints valid JSON, equal to schemas/servd.schema.json."""
    result = servd_cli("schema")
    assert result.returncode == 0
    expected = json.loads((REPO / "schemas" / "servd.schema.json").read_text("utf-8"))
    assert json.loads(result.stdout) == expected


def test_check_passes_the_repository_config():
    """`servd check servd.yaml` on the shipped file exits 0 and names its endpoints."""
    result = servd_cli("check", "servd.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "servd: servd.yaml: ok (3 endpoints: echo, classify, words)"


BAD = """\
version: 1
server:
  max_threads: 0
endpoints:
  echo:
    entrypoint: examples.echo:echo
    batch:
      max_size: -1
    colour: red
"""


def test_check_fails_a_bad_file_with_located_problems_and_a_count(tmp_path):
    """Each problem is one file:line:col line on stderr, followed by how many there are; exit 1."""
    (tmp_path / "servd.yaml").write_text(BAD, "utf-8")
    result = servd_cli("check", "servd.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 4
    assert lines[0] == "servd.yaml:3:3: server.max_threads: 0 is less than the minimum of 1"
    assert lines[1] == "servd.yaml:8:7: endpoints.echo.batch.max_size: -1 is less than the minimum of 1"
    assert re.match(r"servd\.yaml:9:5: endpoints\.echo\.colour: unknown key 'colour' \(allowed: ", lines[2])
    assert lines[3] == "servd: 3 problems found"


def test_check_reports_entrypoint_problems(tmp_path):
    """check imports the entrypoints: a missing attribute fails it, with a singular count."""
    config = "version: 1\nendpoints:\n  e:\n    entrypoint: examples.echo:nothing_here\n"
    (tmp_path / "servd.yaml").write_text(config, "utf-8")
    result = servd_cli("check", "servd.yaml", cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("servd.yaml:4:5: endpoints.e.entrypoint: ")
    assert "nothing_here" in lines[0]
    assert lines[1] == "servd: 1 problem found"


def test_check_of_a_missing_file_exits_1(tmp_path):
    """A path that doesn't exist is a problem, not a traceback."""
    result = servd_cli("check", "absent.yaml", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("absent.yaml:1:1: cannot read the file")
    assert "Traceback" not in result.stderr


# -- run -----------------------------------------------------------------------------------


def test_run_serves_the_endpoints_of_the_file(tmp_path):
    """`servd run` listens on --port and answers a POST to an endpoint."""
    with running(tmp_path, SERVE) as daemon:
        reply = http(daemon.port, "POST", "/v1/endpoints/echo", {"data": {"hello": [1, 2]}})
        assert reply.status == 200
        assert reply.body["data"] == {"hello": [1, 2]}


def test_sigterm_drains_a_running_request_then_exits_0(tmp_path):
    """A request running when SIGTERM arrives still completes for its client; then exit 0."""
    with running(tmp_path, SERVE) as daemon:
        result = daemon.in_background("/v1/endpoints/sleep", {"data": {"s": 1}})
        wait_for(lambda: daemon.stats("sleep")["running"] == 1, "the sleep request to be running")
        daemon.proc.send_signal(signal.SIGTERM)
        reply = result()
        assert isinstance(reply, Reply), reply
        assert (reply.status, reply.body["data"]) == (200, {"s": 1})
        assert daemon.proc.wait(WAIT_S) == 0
        events = [e["event"] for e in daemon.log_events()]
        assert events.index("draining") < events.index("request") < events.index("drained") < events.index("stopped")


def test_sigint_once_also_drains_and_exits_0(tmp_path):
    """Ctrl-C is a graceful stop like SIGTERM."""
    with running(tmp_path, SERVE) as daemon:
        result = daemon.in_background("/v1/endpoints/sleep", {"data": {"s": 0.5}})
        wait_for(lambda: daemon.stats("sleep")["running"] == 1, "the sleep request to be running")
        daemon.proc.send_signal(signal.SIGINT)
        reply = result()
        assert isinstance(reply, Reply), reply
        assert reply.status == 200
        assert daemon.proc.wait(WAIT_S) == 0


def test_a_second_sigint_exits_at_once_without_draining(tmp_path):
    """While a long request drains, a second Ctrl-C ends the process right away, non-zero."""
    with running(tmp_path, SERVE) as daemon:
        result = daemon.in_background("/v1/endpoints/sleep", {"data": {"s": 300}})
        wait_for(lambda: daemon.stats("sleep")["running"] == 1, "the sleep request to be running")
        daemon.proc.send_signal(signal.SIGINT)
        wait_for(lambda: http(daemon.port, "GET", "/v1/status").body["shutting_down"], "shutting_down")
        daemon.proc.send_signal(signal.SIGINT)
        assert daemon.proc.wait(10) != 0  # far sooner than the 300 s request or the 60 s drain
        assert not isinstance(result(), Reply)  # the client saw its connection drop, not a result


def test_run_of_an_invalid_file_exits_1_without_listening(tmp_path):
    """A bad file is refused before anything listens: the errors go to stderr, the port stays closed."""
    port = free_port()
    proc = start(tmp_path, BAD, port)
    try:
        assert proc.wait(WAIT_S) == 1
    finally:
        kill_group(proc)
    output = (tmp_path / "servd.log").read_text("utf-8")
    assert "servd.yaml:8:7: endpoints.echo.batch.max_size: -1 is less than the minimum of 1" in output
    assert "servd: 3 problems found" in output
    assert "listening" not in output
    with socket.socket() as sock, suppress(ConnectionRefusedError):
        sock.connect(("127.0.0.1", port))
        raise AssertionError(f"something listens on {port}")


def test_run_exits_1_when_a_model_fails_to_load(tmp_path):
    """A class entrypoint whose constructor raises stops the start with exit 1 and a logged reason."""
    config = "version: 1\nendpoints:\n  broken:\n    entrypoint: examples.faults:FailsToLoad\n"
    port = free_port()
    proc = start(tmp_path, config, port)
    try:
        assert proc.wait(WAIT_S) == 1
    finally:
        kill_group(proc)
    output = (tmp_path / "servd.log").read_text("utf-8")
    assert "start failed" in output and "weights file missing" in output
