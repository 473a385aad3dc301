"""The `servd` command as an operator runs it: a real process, its exit codes, output and signals.

`servd run` is started by tests/procs.py: in its own process group, on a port it picks itself
(`--port 0`, read back from its "listening" log event), and the group is always killed at the end,
whatever the test did. Readiness is /readyz answering 200; nothing waits a fixed time.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import servd
from tests.harness import eventually_sync
from tests.procs import REPO, WAIT_S, Reply, env, http, kill_group, running, start


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
    assert result.stdout.strip() == "servd: servd.yaml: ok (5 endpoints: echo, classify, words, chat, simple)"


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
        eventually_sync(lambda: daemon.stats("sleep")["running"] == 1, "the sleep request to be running")
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
        eventually_sync(lambda: daemon.stats("sleep")["running"] == 1, "the sleep request to be running")
        daemon.proc.send_signal(signal.SIGINT)
        reply = result()
        assert isinstance(reply, Reply), reply
        assert reply.status == 200
        assert daemon.proc.wait(WAIT_S) == 0


def test_a_second_sigint_exits_at_once_without_draining(tmp_path):
    """While a long request drains, a second Ctrl-C ends the process right away, non-zero."""
    with running(tmp_path, SERVE) as daemon:
        result = daemon.in_background("/v1/endpoints/sleep", {"data": {"s": 300}})
        eventually_sync(lambda: daemon.stats("sleep")["running"] == 1, "the sleep request to be running")
        daemon.proc.send_signal(signal.SIGINT)
        eventually_sync(lambda: http(daemon.port, "GET", "/v1/status").body["shutting_down"], "shutting_down")
        daemon.proc.send_signal(signal.SIGINT)
        assert daemon.proc.wait(10) != 0  # far sooner than the 300 s request or the 60 s drain
        assert not isinstance(result(), Reply)  # the client saw its connection drop, not a result


def test_run_of_an_invalid_file_exits_1_without_listening(tmp_path):
    """A bad file is refused before anything listens: the errors go to stderr, and no "listening"
    event (the daemon logs one as soon as it has bound its port) nor a failed bind is reported."""
    proc = start(tmp_path, BAD)
    try:
        assert proc.wait(WAIT_S) == 1
    finally:
        kill_group(proc)
    output = (tmp_path / "servd.log").read_text("utf-8")
    assert "servd.yaml:8:7: endpoints.echo.batch.max_size: -1 is less than the minimum of 1" in output
    assert "servd: 3 problems found" in output
    assert "listening" not in output
    assert "cannot start" not in output


def test_run_exits_1_when_a_model_fails_to_load(tmp_path):
    """A class entrypoint whose constructor raises stops the start with exit 1 and a logged reason."""
    config = "version: 1\nendpoints:\n  broken:\n    entrypoint: examples.faults:FailsToLoad\n"
    proc = start(tmp_path, config)
    try:
        assert proc.wait(WAIT_S) == 1
    finally:
        kill_group(proc)
    output = (tmp_path / "servd.log").read_text("utf-8")
    assert "start failed" in output and "weights file missing" in output


def test_a_port_in_use_is_named_in_the_error(tmp_path):
    """ "Address already in use" alone doesn't say which address: the error names host:port and the keys (#11)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "servd.yaml").write_text(SERVE, "utf-8")
        result = servd_cli("run", str(tmp_path / "servd.yaml"), "--port", str(port), cwd=tmp_path)
    assert result.returncode == 1
    assert f"servd: cannot start: cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "(server.host/server.port)" in result.stderr


def test_status_shows_what_torch_threads_auto_resolved_to(tmp_path):
    """/v1/status shows `auto` where the file says auto, and the number it resolved to (#11: it showed null)."""
    config = "version: 1\nendpoints:\n  echo:\n    entrypoint: examples.echo:echo\n"
    with running(tmp_path, config) as daemon:
        status = http(daemon.port, "GET", "/v1/status").body
    assert status["server"]["torch_threads"] == "auto"
    assert isinstance(status["torch_threads_in_use"], int) and status["torch_threads_in_use"] >= 1
