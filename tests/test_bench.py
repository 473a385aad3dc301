"""`servd bench` against the real daemon: throughput of an endpoint of known cost, errors by code, lost requests."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from typing import Any

import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application
from tornado.websocket import WebSocketHandler

from servd.tools import bench
from tests.harness import serve

SLEEP_S = 0.02
CONCURRENCY = 4
IDEAL_RPS = CONCURRENCY / SLEEP_S  # 200 req/s: the endpoint's capacity, whatever the client count above 4

CONFIG = f"""
version: 1
endpoints:
  sleep:
    entrypoint: examples.faults:sleep
    concurrency: {CONCURRENCY}
  tiny:
    entrypoint: examples.faults:sleep
    queue: {{max_size: 2}}
  echo:
    entrypoint: examples.echo:echo
  levels:
    entrypoint: examples.faults:sleep
    queue: {{priority_levels: 2}}
"""
RUN_LIMIT_S = 120


async def run_bench(url: str, *args: str) -> tuple[int, str, str]:
    """`python -m servd bench URL ARGS...` in a subprocess, so the in-process daemon keeps serving."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "servd", "bench", url, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_LIMIT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode(), err.decode()


def one_level(stdout: str) -> dict[str, Any]:
    levels = json.loads(stdout)["levels"]
    assert len(levels) == 1
    return levels[0]


async def test_throughput_of_a_sleep_endpoint_is_near_its_capacity(tmp_path):
    """8 clients on a 20 ms endpoint with 4 slots measure roughly 200 req/s, every request answered."""
    async with serve(tmp_path, CONFIG) as d:
        rc, out, err = await run_bench(
            d.ws_url, "--endpoint", "sleep", "--data", str(SLEEP_S), "--clients", "8",
            "--duration", "3", "--warmup", "0.5", "--json",
        )  # fmt: skip
    assert rc == 0, err
    level = one_level(out)
    assert 0.4 * IDEAL_RPS <= level["throughput_rps"] <= 1.1 * IDEAL_RPS, level
    assert level["errors"] == {} and level["lost"] == 0
    assert level["completed"] == level["sent"] > 0
    assert level["latency_s"]["run"]["p50"] >= SLEEP_S
    assert level["batch_sizes"] == {"1": level["completed"]}


async def test_queue_overflow_is_counted_by_code_over_websocket(tmp_path):
    """Many clients on a queue of 2: queue_full errors are counted, every request is answered, none lost."""
    async with serve(tmp_path, CONFIG) as d:
        rc, out, err = await run_bench(
            d.ws_url, "--endpoint", "tiny", "--data", "0.01", "--clients", "16",
            "--duration", "2", "--warmup", "0", "--requests", "1500", "--json",
        )  # fmt: skip
    assert rc == 0, err
    level = one_level(out)
    assert level["errors"].get("queue_full", 0) > 0 and level["completed"] > 0
    assert set(level["errors"]) == {"queue_full"}
    assert level["lost"] == 0
    assert level["sent"] == level["completed"] + sum(level["errors"].values())


async def test_queue_overflow_over_http_prints_the_summary(tmp_path):
    """Over HTTP the text summary shows throughput, the latency split, batch sizes and errors by code."""
    async with serve(tmp_path, CONFIG) as d:
        rc, out, err = await run_bench(
            d.url, "--endpoint", "tiny", "--data", "0.01", "--clients", "8", "--transport", "http",
            "--duration", "1.5", "--warmup", "0", "--requests", "800",
        )  # fmt: skip
    assert rc == 0, err
    assert re.search(r"^requests +\d+ sent, \d+ completed, \d+ errors, 0 lost$", out, re.M), out
    assert re.search(r"^throughput +[\d.]+ req/s", out, re.M)
    for row in ("total", "queue wait", "run"):
        assert re.search(rf"^  {row} +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+$", out, re.M), out
    assert re.search(r"^batch sizes +1: \d+ \(100%\)$", out, re.M)
    assert re.search(r"^errors +queue_full \d+$", out, re.M)


async def test_client_sweep_prints_one_row_per_level(tmp_path):
    """--clients 1,3 runs two levels and prints a table with a row for each."""
    async with serve(tmp_path, CONFIG) as d:
        rc, out, err = await run_bench(
            d.ws_url, "--endpoint", "echo", "--data", '{"x": 1}', "--clients", "1,3", "--duration", "0.5",
            "--warmup", "0",
        )  # fmt: skip
    assert rc == 0, err
    rows = [line.split() for line in out.splitlines() if re.match(r"^ +\d+ ", line)]
    assert [row[0] for row in rows] == ["1", "3"]
    assert all(row[-1] == "0" for row in rows)  # lost


async def test_data_file_is_sent_as_the_payload(tmp_path):
    """--data-file sends the file's JSON; the endpoint's answers are counted as completed."""
    payload = tmp_path / "payload.json"
    payload.write_text(json.dumps({"s": 0}))
    async with serve(tmp_path, CONFIG) as d:
        rc, out, err = await run_bench(
            d.ws_url, "--endpoint", "sleep", "--data-file", str(payload), "--requests", "20",
            "--duration", "5", "--warmup", "0", "--json",
        )  # fmt: skip
    assert rc == 0, err
    level = one_level(out)
    assert level["sent"] == level["completed"] == 20


async def test_progress_line_goes_to_stderr(tmp_path, capsys):
    """With progress on, a live line with the rate and errors is written to stderr (and cleared)."""
    async with serve(tmp_path, CONFIG) as d:
        options = bench.Options(url=d.ws_url, endpoint="echo", duration_s=0.8, warmup_s=0.2, progress=True)
        level = await bench.run_level(options, 2)
    err = capsys.readouterr().err
    assert "warm-up" in err and "req/s" in err and "errors" in err
    assert err.endswith("\r\033[K")
    assert level["lost"] == 0 and level["completed"] > 0


FAILING = """
version: 1
endpoints:
  odd_fails:
    entrypoint: examples.faults:fail_on_odd
"""


async def test_a_run_where_every_request_failed_exits_1_and_says_why(tmp_path):
    """A model that raises on every input: the numbers, then exit 1 naming the errors (it exited 0: "foundations")."""
    async with serve(tmp_path, FAILING, expect_errors=True) as d:
        rc, out, err = await run_bench(
            d.ws_url, "--endpoint", "odd_fails", "--data", "1", "--requests", "20", "--duration", "5",
            "--warmup", "0", "--json",
        )  # fmt: skip
    level = one_level(out)
    assert level["completed"] == 0 and level["errors"] == {"endpoint_failed": 20}
    assert rc == 1
    assert err.strip() == "servd bench: no request completed at 1 client: all 20 failed (endpoint_failed 20)"


async def test_a_misspelt_endpoint_fails_at_once_naming_the_ones_served(tmp_path):
    """`--endpoint ecoh` is refused before any load, over either transport, with the names the server has
    and the likely one: it used to run every level's whole duration (here 30 s) and then fail (#24)."""
    async with serve(tmp_path, CONFIG) as d:
        for url, transport in ((d.ws_url, "ws"), (d.url, "http")):
            began = time.monotonic()
            rc, out, err = await run_bench(
                url, "--transport", transport, "--endpoint", "ecoh", "--clients", "1,2", "--duration", "30",
                "--warmup", "0",
            )  # fmt: skip
            assert time.monotonic() - began < 15, "the bench ran its levels before failing"
            assert rc == 1 and out == ""
            port = d.url.rsplit(":", 1)[1]
            assert err.strip() == (
                f"servd bench: unknown_endpoint: no endpoint 'ecoh' at http://127.0.0.1:{port} "
                "(it serves sleep, tiny, echo, levels; did you mean 'echo'?)"
            )
        served = d.daemon.endpoints["echo"].stats.completed
    assert served == 0


async def test_a_server_that_cannot_list_its_endpoints_is_loaded_anyway(tmp_path):
    """The probe decides only when the listing answers: a token that may not list, or a proxy passing only
    the endpoint's path, still gets its load (here: a websocket-only server, see Silent below)."""
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(Application([(r"/v1/ws", Echoing)]))
    server.add_sockets(sockets)
    try:
        port = sockets[0].getsockname()[1]
        rc, out, err = await run_bench(
            f"ws://127.0.0.1:{port}", "--endpoint", "e", "--requests", "5", "--duration", "5", "--warmup", "0",
            "--json",
        )  # fmt: skip
    finally:
        server.stop()
        await server.close_all_connections()
    assert rc == 0, err
    assert one_level(out)["completed"] == 5


class Echoing(WebSocketHandler):
    """A websocket-only server that completes each submit at once (no /v1/endpoints)."""

    def on_message(self, message: str | bytes) -> None:
        submit = json.loads(message)
        self.write_message(json.dumps({"type": "completed", "id": submit["id"], "data": submit["data"]}))


class Silent(WebSocketHandler):
    """A server that accepts submits and never answers them."""

    def on_message(self, message: str | bytes) -> None:
        pass


async def test_requests_without_an_answer_are_reported_lost(tmp_path):
    """Against a server that never answers, every client's request is counted as lost and bench exits 1."""
    sockets = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(Application([(r"/v1/ws", Silent)]))
    server.add_sockets(sockets)
    try:
        port = sockets[0].getsockname()[1]
        rc, out, err = await run_bench(
            f"ws://127.0.0.1:{port}", "--endpoint", "e", "--clients", "2", "--duration", "0.3", "--warmup", "0",
            "--drain", "0.5", "--json",
        )  # fmt: skip
    finally:
        server.stop()
        await server.close_all_connections()
    assert rc == 1
    level = one_level(out)
    assert level["lost"] == 2 and level["completed"] == 0
    assert "servd bench: 2 request(s) lost at 2 clients: no answer while the connection stayed open" in err


# -- priorities and deadlines (#12) -----------------------------------------------------------


async def test_a_priority_mix_is_split_by_level_and_the_higher_level_waits_less(tmp_path):
    """--priority-mix 1:0.25,2:0.75 on a busy one-slot endpoint: about a quarter at level 1, each
    level's counts and latencies in `by_priority`, and level 1 waiting far less than level 2."""
    async with serve(tmp_path, CONFIG) as d:
        rc, out, err = await run_bench(
            d.ws_url, "--endpoint", "levels", "--data", "0.01", "--clients", "8", "--priority-mix", "1:0.25,2:0.75",
            "--requests", "300", "--duration", "20", "--warmup", "0", "--json",
        )  # fmt: skip
    assert rc == 0, err
    assert json.loads(out)["priorities"] == {"1": 0.25, "2": 0.75}
    level = one_level(out)
    parts = level["by_priority"]
    assert set(parts) == {"1", "2"}
    assert parts["1"]["sent"] + parts["2"]["sent"] == level["sent"] == 300
    assert 0.1 < parts["1"]["sent"] / 300 < 0.4
    assert all(part["completed"] == part["sent"] and part["errors"] == {} for part in parts.values())
    assert parts["1"]["latency_s"]["queue"]["p50"] * 3 < parts["2"]["latency_s"]["queue"]["p50"]


async def test_a_deadline_shows_as_timeouts_of_its_level_over_http(tmp_path):
    """--priority 1 --deadline-s 0.05 where the queue holds about 140 ms: requests end in timeout,
    counted by code overall and in the level's row of the text summary; the run still exits 0."""
    async with serve(tmp_path, CONFIG) as d:
        rc, out, err = await run_bench(
            d.url, "--transport", "http", "--endpoint", "levels", "--data", "0.02", "--clients", "8",
            "--priority", "1", "--deadline-s", "0.05", "--duration", "1.5", "--warmup", "0",
        )  # fmt: skip
    assert rc == 0, err
    assert re.search(r"^errors +timeout \d+$", out, re.M), out
    lines = out.splitlines()
    at = lines.index("by priority")
    assert lines[at + 1].split() == [
        "priority",
        "sent",
        "done",
        "p50",
        "ms",
        "p99",
        "ms",
        "wait",
        "p50",
        "wait",
        "p99",
        "errors",
    ]
    row = lines[at + 2].split()
    assert row[0] == "1" and int(row[2]) > 0 and row[-2:-1] == ["timeout"]


async def test_a_sweep_lists_each_clients_levels(tmp_path):
    """With --clients 1,2 and --priority 2 the table ends with one by-priority row per client count."""
    async with serve(tmp_path, CONFIG) as d:
        rc, out, err = await run_bench(
            d.ws_url, "--endpoint", "levels", "--data", "0", "--clients", "1,2", "--priority", "2",
            "--duration", "0.5", "--warmup", "0",
        )  # fmt: skip
    assert rc == 0, err
    lines = out.splitlines()
    rows = [line.split() for line in lines[lines.index("by priority:") + 2 :]]
    assert [row[:2] for row in rows] == [["1", "2"], ["2", "2"]]
    assert all(row[-1] == "none" for row in rows)


async def test_a_level_ends_with_its_websockets_closed_on_both_sides(tmp_path):
    """A level returns once the server has answered each close frame, so bench run in-process (a
    notebook, a test) leaves no open socket to the garbage collector, whose ResourceWarning would
    surface later in unrelated code (it failed test_fuzz in CI, after test_frames ran bench)."""
    async with serve(tmp_path, CONFIG) as d:
        options = bench.Options(url=d.ws_url, endpoint="echo", duration_s=0.3, warmup_s=0.0, requests=50)
        level = await bench.run_level(options, 3)
        assert level["completed"] > 0 and level["lost"] == 0
        assert d.daemon.connections == set(), "the server still holds the bench's websockets"


def test_a_priority_mix_reads_as_level_weight_pairs():
    assert bench.parse_priority_mix("1:0.2,3:0.8") == ((1, 0.2), (3, 0.8))
    assert bench.parse_priority_mix("0:1, 2:4") == ((0, 1.0), (2, 4.0))
    for bad in ("1", "1:0", "1:x", "-1:1", "1:1,1:2", "1:nan", ""):
        with pytest.raises(ValueError, match="LEVEL:WEIGHT"):
            bench.parse_priority_mix(bad)


def test_bad_scheduling_arguments_exit_2_with_a_message(capsys):
    """A bad --priority, --priority-mix or --deadline-s is refused before anything is sent."""
    for args, says in (
        (["--priority", "-1"], "--priority must be 0"),
        (["--priority-mix", "1:0.5,2"], "--priority-mix must be LEVEL:WEIGHT"),
        (["--deadline-s", "0"], "--deadline-s must be a number of seconds > 0"),
    ):
        assert bench.cli(["ws://127.0.0.1:1", "--endpoint", "e", *args]) == 2
        assert says in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: the two are mutually exclusive
        bench.cli(["ws://127.0.0.1:1", "--endpoint", "e", "--priority", "1", "--priority-mix", "1:1"])


def test_bad_arguments_exit_2_with_a_message(capsys):
    """Invalid JSON data or client counts are refused before anything is sent."""
    assert bench.cli(["ws://127.0.0.1:1", "--endpoint", "e", "--data", "{"]) == 2
    assert "--data is not valid JSON" in capsys.readouterr().err
    assert bench.cli(["ws://127.0.0.1:1", "--endpoint", "e", "--clients", "0,4"]) == 2
    assert "--clients must be between 1" in capsys.readouterr().err


def test_unreachable_server_exits_1(capsys):
    """Nothing listening: bench says it cannot connect and exits 1."""
    sockets = bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    for sock in sockets:
        sock.close()
    assert bench.cli([f"ws://127.0.0.1:{port}", "--endpoint", "e", "--duration", "0.2", "--warmup", "0"]) == 1
    assert "cannot connect" in capsys.readouterr().err
