"""`servd status [URL]`: what an operator reads about a running daemon, and its exit status.

Against a real `servd run` (tests/procs.py's `running`: own process group, killed at the
end), and against a port where nothing listens. The last tests render canned answers, for the
cases a live daemon can't be steered into cheaply.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

import servd
from servd.client import Cancelled, Client, EndpointFailed, Timeout
from servd.tools.status import duration, outcomes_from_metrics, render
from tests.harness import eventually_sync
from tests.procs import REPO, WAIT_S, closed_port, env, http, running

CONFIG = """\
version: 1
server:
  drain_timeout_s: 60
endpoints:
  echo:
    entrypoint: examples.echo:echo
    concurrency: 3
  sleep:
    entrypoint: examples.faults:sleep
  batched:
    entrypoint: examples.faults:sleep_batch
    batch: {max_size: 8, max_delay_ms: 5}
"""


def servd_status(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "servd", "status", *args],
        cwd=REPO,
        env=env() | extra_env,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )


def table(stdout: str) -> dict[str, list[str]]:
    """The endpoint rows of the summary, by endpoint name, split into cells on whitespace."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("endpoint "))
    rows = [line.split() for line in lines[header + 1 :] if line.strip()]
    return {row[0]: row[1:] for row in rows}


def test_status_summarises_each_endpoint_of_a_running_daemon(tmp_path):
    """Queued, running and workers/max per endpoint as /v1/endpoints has them; state, generation."""
    with running(tmp_path, CONFIG) as daemon:
        for i in range(3):
            assert http(daemon.port, "POST", "/v1/endpoints/echo", {"data": i}).status == 200
        first = daemon.in_background("/v1/endpoints/sleep", {"data": {"s": 30}})
        eventually_sync(lambda: daemon.stats("sleep")["running"] == 1, "the first sleep to be running")
        second = daemon.in_background("/v1/endpoints/sleep", {"data": {"s": 0}})
        eventually_sync(lambda: daemon.stats("sleep")["queued"] == 1, "the second sleep to be queued")

        result = servd_status(f"http://127.0.0.1:{daemon.port}")

        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0].startswith(f"servd {servd.__version__} at http://127.0.0.1:{daemon.port}: ready")
        assert lines[1] == f"config {tmp_path / 'servd.yaml'}, generation 1"
        assert lines[2] == "last reload: none since start"
        rows = table(result.stdout)
        assert list(rows) == ["echo", "sleep", "batched"]
        assert rows["echo"][:4] == ["0", "0", "0/3", "—"]
        assert rows["echo"][-4:] == ["3", "0", "0", "0"]  # done, failed, timeout, cancelled
        assert rows["sleep"][:4] == ["1", "1", "1/1", "—"]
        assert rows["batched"][:4] == ["0", "0", "0/1", "8"]
        assert rows["batched"][4:8] == ["—", "—", "—", "—"]  # no request yet: no percentiles, no ETA or its error
        del first, second  # their connections drop when the daemon is killed


ENDINGS = """\
version: 1
endpoints:
  sleep:
    entrypoint: examples.faults:sleep
    queue: {timeout_s: 0.5}
"""


def test_only_the_entrypoints_failures_count_as_failed(tmp_path):
    """One request of each ending: a cancel and a timeout are shown as such, not as failures ("foundations")."""
    with running(tmp_path, ENDINGS) as daemon, Client(f"ws://127.0.0.1:{daemon.port}") as client:
        assert client.predict("sleep", {"s": 0}) == {"s": 0}
        with pytest.raises(EndpointFailed):
            client.predict("sleep", "not a number")  # float("not a number") raises in the entrypoint
        job = client.submit("sleep", {"s": 1})
        job.cancel()
        with pytest.raises(Cancelled):
            job.result(timeout=WAIT_S)
        with pytest.raises(Timeout):
            client.predict("sleep", {"s": 2})  # past queue.timeout_s (0.5 s), waiting or running
        outcomes = {"completed": 1, "endpoint_failed": 1, "cancelled": 1, "timeout": 1}
        assert daemon.stats("sleep")["outcomes"] == outcomes
        assert outcomes_from_metrics(http(daemon.port, "GET", "/metrics").body)["sleep"] == outcomes

        result = servd_status(f"http://127.0.0.1:{daemon.port}")

    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if line.startswith("endpoint "))
    assert header.split()[-4:] == ["done", "failed", "timeout", "cancelled"]
    rows = table(result.stdout)
    assert rows["sleep"][-4:] == ["1", "1", "1", "1"]  # done, failed, timeout, cancelled


PRIORITIES = """\
version: 1
endpoints:
  shared:
    entrypoint: examples.faults:sleep
    queue: {priority_levels: 3}
"""


def test_status_shows_the_eta_error_and_the_queue_by_priority(tmp_path):
    """Requests told an ETA and then completed give the ETA error column a p50/p99; requests
    waiting at levels 1 and 3 are counted per level under the table (#12)."""
    with running(tmp_path, PRIORITIES) as daemon, Client(f"ws://127.0.0.1:{daemon.port}") as client:
        for _ in range(3):  # the first call is timed; the next ones are given an ETA and judged by it
            assert client.predict("shared", {"s": 0.05}) == {"s": 0.05}
        assert daemon.stats("shared")["eta_error_s"]["p50"] is not None
        blocker = client.submit("shared", {"s": 30})
        eventually_sync(lambda: daemon.stats("shared")["running"] == 1, "the blocker to be running")
        jobs = [client.submit("shared", {"s": 0}, priority=level) for level in (1, 3, 3)]
        eventually_sync(lambda: daemon.stats("shared")["queued"] == 3, "three requests to be queued")

        result = servd_status(f"http://127.0.0.1:{daemon.port}")

        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[-1] == "queued by priority (1 = highest): shared 1:1 2:0 3:2"
        row = table("\n".join(lines[:-1]))["shared"]
        assert row[0] == "3" and row[7] != "—" and "/" in row[7]  # queued; eta error p50/p99
        del blocker, jobs  # their connection drops when the daemon is killed


def test_status_shows_a_failed_reload_with_its_error_then_an_applied_one(tmp_path):
    """An invalid edit + SIGHUP: `invalid` and the file:line:col error; a fixed one: `applied`, generation 2."""
    with running(tmp_path, CONFIG) as daemon:
        config = tmp_path / "servd.yaml"
        url = f"http://127.0.0.1:{daemon.port}"
        config.write_text(CONFIG.replace("concurrency: 3", "concurrency: -3"), "utf-8")
        daemon.proc.send_signal(signal.SIGHUP)
        eventually_sync(lambda: http(daemon.port, "GET", "/v1/status").body["last_reload"], "the reload to be recorded")

        result = servd_status(url)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[2].startswith("last reload: invalid at ")
        assert lines[3].startswith("  error: ")
        assert (
            "servd.yaml:7:" in lines[3] and "endpoints.echo.concurrency: -3 is less than the minimum of 1" in lines[3]
        )
        assert "generation 1" in lines[1]

        config.write_text(CONFIG.replace("concurrency: 3", "concurrency: 2"), "utf-8")
        daemon.proc.send_signal(signal.SIGHUP)
        eventually_sync(  # the whole status is shown on a timeout: last_reload says what happened
            lambda: http(daemon.port, "GET", "/v1/status").body,
            "generation 2",
            until=lambda status: status["generation"] == 2,
        )

        result = servd_status(url)
        lines = result.stdout.splitlines()
        assert lines[1].endswith("generation 2")
        assert lines[2].startswith("last reload: applied at ")
        assert lines[3].startswith("  changes: retuned echo")
        assert table(result.stdout)["echo"][2] == "0/2"


def test_a_reload_under_a_port_override_asks_for_no_restart(tmp_path):
    """`servd run --port P` (the file has no port): a reload that leaves host and port alone must not
    claim a restart is needed; restarting with the same command line would change nothing.
    """
    with running(tmp_path, CONFIG) as daemon:
        (tmp_path / "servd.yaml").write_text(CONFIG.replace("concurrency: 3", "concurrency: 2"), "utf-8")
        daemon.proc.send_signal(signal.SIGHUP)
        eventually_sync(  # the whole status is shown on a timeout: last_reload says what happened
            lambda: http(daemon.port, "GET", "/v1/status").body,
            "generation 2",
            until=lambda status: status["generation"] == 2,
        )
        result = servd_status(f"http://127.0.0.1:{daemon.port}")
        assert result.returncode == 0, result.stderr
        assert "restart needed" not in result.stdout
        assert http(daemon.port, "GET", "/v1/status").body["restart_needed"] == []


def test_status_exits_1_with_a_reason_when_nothing_listens():
    """No daemon at the URL: one line on stderr saying so, nothing on stdout, exit 1."""
    with closed_port() as port:
        result = servd_status(f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"servd status: cannot reach servd at http://127.0.0.1:{port}: ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_status_exits_1_for_something_that_is_not_servd(tmp_path):
    """A port that answers HTTP but not servd's JSON (here /v1/status is a 404 page) is not a summary."""
    with running(tmp_path, CONFIG) as daemon:
        result = servd_status(f"http://127.0.0.1:{daemon.port}/not-servd")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(
        f"servd status: http://127.0.0.1:{daemon.port}/not-servd/v1/status answered HTTP 404"
    )


def test_status_sends_the_token_from_the_option_or_the_environment(tmp_path):
    """With server.tokens_file set: no token is exit 1 naming --token; --token or $SERVD_TOKEN works."""
    (tmp_path / "tokens").write_text("# operators\ns3cret\n", "utf-8")
    config = CONFIG.replace("  drain_timeout_s: 60\n", "  drain_timeout_s: 60\n  tokens_file: tokens\n")
    with running(tmp_path, config) as daemon:
        url = f"http://127.0.0.1:{daemon.port}"
        refused = servd_status(url)
        assert refused.returncode == 1
        assert "--token" in refused.stderr and "SERVD_TOKEN" in refused.stderr
        assert servd_status(url, "--token", "wrong").returncode == 1
        assert servd_status(url, "--token", "s3cret").returncode == 0
        assert servd_status(url, SERVD_TOKEN="s3cret").returncode == 0


# -- rendering -----------------------------------------------------------------------------


def endpoint(**stats):
    base = {
        "queued": 0, "running": 0, "workers": 0, "workers_max": 2, "batch_size": 32, "eta_s": None,
        "completed": 0, "failed": 0, "outcomes": {"completed": 0},
        "wait_s": {"p50": None, "p99": None}, "run_s": {"p50": None, "p99": None},
        "eta_error_s": {"p50": None, "p99": None}, "queued_by_priority": {"1": 0},
    }  # fmt: skip
    return {"name": "classify", "batch": {"max_size": 32, "max_delay_ms": 5}, "accepting": True, "stats": base | stats}


STATUS = {"version": "1", "config": "/etc/servd/servd.yaml", "generation": 4, "ready": True, "shutting_down": False,
          "uptime_s": 7300, "last_reload": None, "restart_needed": []}  # fmt: skip


def test_render_shows_percentiles_eta_and_a_lowered_batch_size():
    """p50/p99 of wait and run, the ETA of a new request, and a batch size lowered after OOM."""
    stats = endpoint(batch_size=16, wait_s={"p50": 0.004, "p99": 0.25}, run_s={"p50": 0.012, "p99": 1.5}, eta_s=2.0)
    text = render("http://h:1", STATUS, [stats], now=0)
    assert text.splitlines()[0] == "servd 1 at http://h:1: ready, up 2h01m"
    lines = text.splitlines()
    assert lines[-1] == "batch size lowered after running out of memory: classify"
    assert table("\n".join(lines[:-1]))["classify"] == [
        "0",
        "0",
        "0/2",
        "16/32",
        "4.0ms/250ms",
        "12.0ms/1.5s",
        "2.0s",
        "—",
        "0",
        "0",
        "0",
        "0",
    ]


def test_render_says_what_needs_a_restart_and_what_is_draining():
    """restart_needed keys and non-accepting endpoints are named; a draining daemon says so."""
    status = STATUS | {"shutting_down": True, "restart_needed": ["server.port"]}
    text = render("http://h:1", status, [endpoint(eta_s=0.0) | {"accepting": False}], now=0)
    lines = text.splitlines()
    assert "draining" in lines[0]
    assert "restart needed to apply: server.port" in lines
    assert lines[-1] == "not accepting requests (draining): classify"
    assert table("\n".join(lines[:-1]))["classify"][6] == "now"


def test_render_shows_the_eta_error_and_the_queue_by_priority():
    """p50/p99 of |actual - ETA| in its column; an endpoint with priority levels gets its queue
    depth per level under the table, one with a single level gets none (#12)."""
    levels = endpoint(
        queued=5, eta_error_s={"p50": 0.002, "p99": 0.04}, queued_by_priority={"1": 1, "2": 0, "3": 4}
    ) | {"name": "shared"}
    single = endpoint(queued=2, queued_by_priority={"1": 2})
    lines = render("http://h:1", STATUS, [levels, single], now=0).splitlines()
    header = next(line for line in lines if line.startswith("endpoint "))
    assert "eta error p50/p99" in header
    assert lines[-1] == "queued by priority (1 = highest): shared 1:1 2:0 3:4"
    rows = table("\n".join(lines[:-1]))
    assert rows["shared"][7] == "2.0ms/40.0ms"
    assert rows["classify"][7] == "—"


def test_durations_read_at_a_glance():
    assert [duration(s) for s in (None, 0.0004, 0.012, 0.25, 1.5, 185, 7300, 3 * 86400)] == [
        "—", "0.40ms", "12.0ms", "250ms", "1.5s", "3m05s", "2h01m", "3d00h",
    ]  # fmt: skip


def test_render_names_endings_that_have_no_column():
    """Requests ended by a drain or shutdown (unavailable) are not failures either; they are named under the table."""
    stats = endpoint(
        completed=7, failed=6, outcomes={"completed": 7, "endpoint_failed": 1, "timeout": 2, "unavailable": 3}
    )
    lines = render("http://h:1", STATUS, [stats], now=0).splitlines()
    assert lines[-1] == "other endings: classify unavailable 3"
    assert table("\n".join(lines[:-1]))["classify"][-4:] == ["7", "1", "2", "0"]


def test_render_without_outcomes_shows_no_counts_it_cannot_split():
    """A daemon that gives neither stats.outcomes nor /metrics: — rather than failures mixed with cancels."""
    stats = endpoint(completed=5, failed=4)
    del stats["stats"]["outcomes"]
    assert table(render("http://h:1", STATUS, [stats], now=0))["classify"][-4:] == ["5", "—", "—", "—"]


def test_outcomes_are_read_from_metrics_text():
    """The /metrics fallback, for a daemon whose /v1/endpoints has no stats.outcomes."""
    text = (
        "# TYPE servd_requests_total counter\n"
        'servd_requests_total{endpoint="echo",outcome="completed"} 12.0\n'
        'servd_requests_total{endpoint="echo",outcome="cancelled"} 2.0\n'
        'servd_requests_total{endpoint="a.b-c",outcome="timeout"} 1.0\n'
        'servd_rejected_total{endpoint="echo",reason="queue_full"} 9.0\n'
    )
    assert outcomes_from_metrics(text) == {"echo": {"completed": 12, "cancelled": 2}, "a.b-c": {"timeout": 1}}
