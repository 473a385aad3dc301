"""servd.client against the real daemon: every method, every typed error, cancel, stream, reconnect, HTTP/SSE."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tornado
from tornado.netutil import bind_sockets

from servd.client import (
    ApiClosed,
    AsyncClient,
    Cancelled,
    Client,
    ClientLimit,
    ConnectFailed,
    ConnectionLost,
    EndpointFailed,
    InvalidInput,
    QueueFull,
    ServdError,
    Timeout,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnknownEndpoint,
)
from servd.client.errors import BY_CODE, error_from_wire
from servd.errors import ErrorCode
from tests.harness import WAIT_S, Running, eventually, serve

CONFIG = """
version: 1
server:
  max_message_bytes: 1024
endpoints:
  echo:
    entrypoint: examples.echo:echo
  words:
    entrypoint: examples.stream:words
  sleep:
    entrypoint: examples.faults:sleep
  odd:
    entrypoint: examples.faults:fail_on_odd
  ints:
    entrypoint: examples.echo:echo
    input_schema: {type: integer}
  ws_only:
    entrypoint: examples.echo:echo
    api_open: false
  one_slot:
    entrypoint: examples.faults:sleep
    queue: {max_size: 1}
  short_wait:
    entrypoint: examples.faults:sleep
    queue: {timeout_s: 0.3}
  one_each:
    entrypoint: examples.faults:sleep
    queue: {max_per_client: 1}
"""

TRANSPORTS = pytest.mark.parametrize("transport", ["ws", "http"])
BLOCK_S = 1.0  # how long a blocking request holds an endpoint's only slot


def outcomes(d: Running, endpoint: str) -> list[str]:
    """The daemon's logged outcome of each request to `endpoint`."""
    return [e["outcome"] for e in d.log_events() if e.get("event") == "request" and e.get("endpoint") == endpoint]


# -- methods ---------------------------------------------------------------------------------


@TRANSPORTS
async def test_predict_returns_the_result(tmp_path, transport):
    """predict() returns the endpoint's result, on either transport."""
    async with serve(tmp_path, CONFIG) as d, AsyncClient(d.ws_url, transport=transport) as client:
        assert await client.predict("echo", {"x": [1, "two"]}) == {"x": [1, "two"]}


async def test_one_websocket_carries_every_request(tmp_path):
    """Many concurrent predicts from one AsyncClient share one connection and each gets its own answer."""
    async with serve(tmp_path, CONFIG) as d, AsyncClient(d.ws_url) as client:
        results = await asyncio.gather(*(client.predict("echo", i) for i in range(50)))
        assert results == list(range(50))
        assert len(d.daemon.connections) == 1


@TRANSPORTS
async def test_submit_returns_a_job_with_its_result_and_timing(tmp_path, transport):
    """submit() returns a job whose result() is the data and whose timing comes from the server."""
    async with serve(tmp_path, CONFIG) as d, AsyncClient(d.ws_url, transport=transport) as client:
        job = await client.submit("echo", "hi")
        assert await job.result(timeout=WAIT_S) == "hi"
        assert job.status().state == "done" and job.status().outcome == "completed"
        assert job.timing is not None and job.timing["batch_size"] == 1
        assert job.id is not None


@TRANSPORTS
async def test_job_status_shows_queued_with_rank_then_running(tmp_path, transport):
    """A job behind a running one is queued at rank 0 of 1, then running, then done."""
    async with serve(tmp_path, CONFIG) as d, AsyncClient(d.ws_url, transport=transport) as client:
        blocker = await client.submit("sleep", BLOCK_S)
        await eventually(lambda: blocker.status().state, "the blocker to run", until=lambda s: s == "running")
        job = await client.submit("sleep", 0)
        status = job.status()
        assert (status.state, status.rank, status.queue_size) == ("queued", 0, 1)
        await eventually(lambda: job.status().state, "the job to start", until=lambda s: s in ("running", "done"))
        assert await job.result(timeout=WAIT_S) == 0
        assert await blocker.result(timeout=WAIT_S) == BLOCK_S


@TRANSPORTS
async def test_stream_yields_each_partial_result(tmp_path, transport):
    """stream() iterates a generator endpoint's partial results in order."""
    async with serve(tmp_path, CONFIG) as d, AsyncClient(d.ws_url, transport=transport) as client:
        parts = [p async for p in client.stream("words", {"text": "one two three", "delay_s": 0.001})]
        assert parts == ["one", "one two", "one two three"]


@TRANSPORTS
async def test_a_job_iterates_its_partials_and_keeps_them(tmp_path, transport):
    """Iterating a submitted job yields its partials; job.partials keeps them all."""
    async with serve(tmp_path, CONFIG) as d, AsyncClient(d.ws_url, transport=transport) as client:
        job = await client.submit("words", {"text": "a b", "delay_s": 0.001})
        assert [p async for p in job] == ["a", "a b"]
        assert job.partials == ["a", "a b"]
        assert await job.result() == "a b"


# -- cancel ----------------------------------------------------------------------------------


@TRANSPORTS
async def test_cancel_ends_a_queued_job_with_cancelled(tmp_path, transport):
    """cancel() on a queued job ends it with Cancelled; it never runs, and the server says so."""
    async with serve(tmp_path, CONFIG) as d, AsyncClient(d.ws_url, transport=transport) as client:
        blocker = await client.submit("sleep", BLOCK_S)
        await eventually(lambda: blocker.status().state, "the blocker to run", until=lambda s: s == "running")
        job = await client.submit("sleep", 0)
        await job.cancel()
        with pytest.raises(Cancelled):
            await job.result(timeout=WAIT_S)
        assert job.status().outcome == "cancelled"
        await blocker.result(timeout=WAIT_S)
        await eventually(
            lambda: sorted(outcomes(d, "sleep")),
            "both outcomes logged",
            until=lambda o: o == ["cancelled", "completed"],
        )


async def test_predict_timeout_cancels_the_request_on_the_server(tmp_path):
    """predict(timeout=) raises Timeout (a TimeoutError) when it runs out, and the server cancels the request."""
    async with serve(tmp_path, CONFIG) as d, AsyncClient(d.ws_url) as client:
        with pytest.raises(Timeout) as caught:
            await client.predict("sleep", BLOCK_S, timeout=0.1)
        assert isinstance(caught.value, TimeoutError)
        assert "client-side" in caught.value.message
        await eventually(lambda: outcomes(d, "sleep"), "the cancel logged", until=lambda o: o == ["cancelled"])


async def test_job_result_timeout_leaves_the_job_running(tmp_path):
    """job.result(timeout=) only bounds the wait: the job goes on and its result comes later."""
    async with serve(tmp_path, CONFIG) as d, AsyncClient(d.ws_url) as client:
        job = await client.submit("sleep", 0.5)
        with pytest.raises(Timeout):
            await job.result(timeout=0.01)
        assert await job.result(timeout=WAIT_S) == 0.5


# -- typed errors ----------------------------------------------------------------------------


def test_every_wire_code_has_its_class():
    """Each error code the server can send maps to a ServdError subclass carrying that code."""
    for code in ErrorCode:
        error = error_from_wire(code.word, "why")
        assert type(error) is BY_CODE[code.word] and error.code == code.word and error.message == "why"
    unknown = error_from_wire("newer_code", "from a newer server")
    assert type(unknown) is ServdError and unknown.code == "newer_code"


@TRANSPORTS
async def test_unknown_endpoint(tmp_path, transport):
    """A call to an endpoint that doesn't exist raises UnknownEndpoint with the server's message."""
    async with serve(tmp_path, CONFIG) as d, AsyncClient(d.ws_url, transport=transport) as client:
        with pytest.raises(UnknownEndpoint, match="no endpoint 'nope'"):
            await client.predict("nope", 1)


@TRANSPORTS
async def test_invalid_input(tmp_path, transport):
    """Data failing the endpoint's input_schema raises InvalidInput naming the problem."""
    async with serve(tmp_path, CONFIG) as d, AsyncClient(d.ws_url, transport=transport) as client:
        with pytest.raises(InvalidInput, match="is not of type 'integer'") as caught:
            await client.predict("ints", "seven")
        assert caught.value.status == (422 if transport == "http" else None)


@TRANSPORTS
async def test_endpoint_failed(tmp_path, transport):
    """An entrypoint that raises gives EndpointFailed naming the exception."""
    async with serve(tmp_path, CONFIG, expect_errors=True) as d, AsyncClient(d.ws_url, transport=transport) as client:
        with pytest.raises(EndpointFailed, match="ValueError: odd input 3"):
            await client.predict("odd", 3)


@TRANSPORTS
async def test_queue_full(tmp_path, transport):
    """Past queue.max_size a call raises QueueFull (over HTTP with the Retry-After hint)."""
    async with serve(tmp_path, CONFIG) as d, AsyncClient(d.ws_url, transport=transport) as client:
        running = await client.submit("one_slot", BLOCK_S)
        await eventually(lambda: running.status().state, "the first call to run", until=lambda s: s == "running")
        waiting = await client.submit("one_slot", 0)
        with pytest.raises(QueueFull, match="max_size") as caught:
            await client.predict("one_slot", 0)
        if transport == "http":
            assert caught.value.retry_after_s is not None and caught.value.retry_after_s >= 1
        await running.cancel()
        await waiting.result(timeout=WAIT_S)


async def test_a_refused_submit_is_raised_by_result(tmp_path):
    """submit() of a refused request returns a done job; result() raises the refusal."""
    async with serve(tmp_path, CONFIG) as d, AsyncClient(d.ws_url) as client:
        job = await client.submit("ints", "x")
        assert job.status().state == "done" and job.status().outcome == "invalid_input"
        with pytest.raises(InvalidInput):
            await job.result()


@TRANSPORTS
async def test_server_timeout(tmp_path, transport):
    """queue.timeout_s passing on the server raises Timeout with the server's message."""
    async with serve(tmp_path, CONFIG) as d, AsyncClient(d.ws_url, transport=transport) as client:
        with pytest.raises(Timeout, match=r"queue.timeout_s=0.3 passed"):
            await client.predict("short_wait", BLOCK_S)


async def test_api_closed_over_http(tmp_path):
    """An endpoint with api_open: false refuses HTTP with ApiClosed (403) and serves the websocket."""
    async with serve(tmp_path, CONFIG) as d:
        async with AsyncClient(d.ws_url, transport="http") as client:
            with pytest.raises(ApiClosed) as caught:
                await client.predict("ws_only", 1)
            assert caught.value.status == 403
        async with AsyncClient(d.ws_url) as client:
            assert await client.predict("ws_only", 1) == 1


@TRANSPORTS
async def test_client_limit(tmp_path, transport):
    """A second waiting request past queue.max_per_client raises ClientLimit."""
    async with serve(tmp_path, CONFIG) as d, AsyncClient(d.ws_url, transport=transport) as client:
        running = await client.submit("one_each", BLOCK_S)
        await eventually(lambda: running.status().state, "the first call to run", until=lambda s: s == "running")
        waiting = await client.submit("one_each", 0)
        with pytest.raises(ClientLimit):
            await client.predict("one_each", 0)
        await running.cancel()
        await waiting.result(timeout=WAIT_S)


@TRANSPORTS
async def test_too_large_fails_only_its_own_request(tmp_path, transport):
    """A submit over server.max_message_bytes raises TooLarge; requests around it are answered normally."""
    async with serve(tmp_path, CONFIG) as d, AsyncClient(d.ws_url, transport=transport) as client:
        calls = [client.predict("echo", 1), client.predict("echo", "x" * 1500), client.predict("echo", 2)]
        first, big, last = await asyncio.gather(*calls, return_exceptions=True)
        assert (first, last) == (1, 2)
        assert isinstance(big, TooLarge)


@TRANSPORTS
async def test_unauthorized_without_the_token(tmp_path, transport):
    """With tokens configured, no token or a wrong one raises Unauthorized; the right one works."""
    (tmp_path / "tokens.txt").write_text("s3cret\n")
    config = "version: 1\nserver: {tokens_file: tokens.txt}\nendpoints: {echo: {entrypoint: examples.echo:echo}}\n"
    async with serve(tmp_path, config) as d:
        for token in (None, "wrong"):
            async with AsyncClient(d.ws_url, token, transport=transport) as client:
                with pytest.raises(Unauthorized, match="bearer token"):
                    await client.predict("echo", 1)
        async with AsyncClient(d.ws_url, "s3cret", transport=transport) as client:
            assert await client.predict("echo", 1) == 1


async def test_shutdown_ends_running_jobs_with_unavailable(tmp_path):
    """A job still running when the daemon's drain time is up ends with Unavailable."""
    config = CONFIG.replace("max_message_bytes: 1024", "max_message_bytes: 1024\n  drain_timeout_s: 0")
    async with serve(tmp_path, config) as d, AsyncClient(d.ws_url) as client:
        job = await client.submit("sleep", BLOCK_S)
        await eventually(lambda: job.status().state, "the job to run", until=lambda s: s == "running")
        await d.daemon.shutdown()
        with pytest.raises(Unavailable, match="shutting down"):
            await job.result(timeout=WAIT_S)


# -- connections -----------------------------------------------------------------------------


async def test_dropped_socket_fails_jobs_in_flight_and_the_next_call_reconnects(tmp_path):
    """When the server drops the socket, jobs on it raise ConnectionLost at once; new calls reconnect."""
    async with serve(tmp_path, CONFIG) as d, AsyncClient(d.ws_url) as client:
        running = await client.submit("sleep", BLOCK_S)
        queued = await client.submit("sleep", 0)
        for connection in list(d.daemon.connections):
            connection.close()
        for job in (running, queued):
            with pytest.raises(ConnectionLost, match="closed before request"):
                await job.result(timeout=WAIT_S)
            assert job.status().outcome == "connection_lost"
        assert await client.predict("echo", "again") == "again"
        assert len(d.daemon.connections) == 1


@TRANSPORTS
async def test_nothing_listening_raises_connect_failed(tmp_path, transport):
    """A server that isn't there raises ConnectFailed rather than hanging."""
    sockets = bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    for sock in sockets:
        sock.close()
    async with AsyncClient(f"ws://127.0.0.1:{port}", transport=transport, connect_timeout=5) as client:
        with pytest.raises(ConnectFailed):
            await client.predict("echo", 1)


async def test_closing_the_client_fails_its_jobs(tmp_path):
    """close() ends the jobs still in flight (ConnectionLost) instead of leaving them waiting."""
    async with serve(tmp_path, CONFIG) as d:
        client = AsyncClient(d.ws_url)
        job = await client.submit("sleep", BLOCK_S)
        await client.close()
        with pytest.raises(ConnectionLost, match="closed by this client"):
            await job.result(timeout=WAIT_S)


# -- the blocking Client -----------------------------------------------------------------------


@TRANSPORTS
async def test_sync_client_methods(tmp_path, transport):
    """Client (blocking, own loop thread) predicts, submits, streams and iterates jobs."""
    async with serve(tmp_path, CONFIG) as d:

        def use() -> dict[str, Any]:
            with Client(d.ws_url, transport=transport) as client:
                job = client.submit("words", {"text": "x y", "delay_s": 0.001})
                return {
                    "predict": client.predict("echo", {"k": 1}),
                    "iterated": list(job),
                    "result": job.result(timeout=WAIT_S),
                    "status": job.status().state,
                    "partials": job.partials,
                    "stream": list(client.stream("words", "p q")),
                }

        seen = await asyncio.to_thread(use)
        assert seen == {
            "predict": {"k": 1},
            "iterated": ["x", "x y"],
            "result": "x y",
            "status": "done",
            "partials": ["x", "x y"],
            "stream": ["p", "p q"],
        }


async def test_sync_client_raises_typed_errors_and_cancels(tmp_path):
    """The blocking Client raises the same typed errors, and Job.cancel() ends a job with Cancelled."""
    async with serve(tmp_path, CONFIG) as d:

        def use() -> list[str]:
            raised = []
            with Client(d.ws_url) as client:
                try:
                    client.predict("nope", 1)
                except UnknownEndpoint as exc:
                    raised.append(exc.code)
                job = client.submit("sleep", BLOCK_S)
                job.cancel()
                try:
                    job.result(timeout=WAIT_S)
                except Cancelled as exc:
                    raised.append(exc.code)
            return raised

        assert await asyncio.to_thread(use) == ["unknown_endpoint", "cancelled"]


async def test_sync_client_after_close_refuses_calls(tmp_path):
    """A closed Client raises RuntimeError instead of hanging."""
    async with serve(tmp_path, CONFIG) as d:

        def use() -> None:
            client = Client(d.ws_url)
            assert client.predict("echo", 1) == 1
            client.close()
            with pytest.raises(RuntimeError, match="closed"):
                client.predict("echo", 1)

        await asyncio.to_thread(use)


def test_importing_the_client_stays_light():
    """`import servd.client` pulls in neither torch, tornado, structlog, yaml nor the daemon."""
    heavy = ["torch", "tornado", "tornado.web", "structlog", "yaml", "jsonschema", "servd.daemon.daemon"]
    code = f"import sys, json, servd.client; print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == []


LIGHT_SCRIPT = """
import importlib.util, sys
missing = [m for m in ("torch", "yaml", "jsonschema", "structlog") if importlib.util.find_spec(m) is None]
from servd.client import Client
with Client(sys.argv[1]) as ws, Client(sys.argv[1], transport="http") as http:
    print(missing, ws.predict("echo", 1), http.predict("echo", 2))
"""


def install_light(root: Path) -> tuple[Path, Path]:
    """`pip install --no-deps` of a copy of the sources, plus a directory holding only tornado."""
    repo = Path(__file__).resolve().parent.parent
    source, target, deps = root / "source", root / "target", root / "deps"
    source.mkdir(parents=True)
    for name in ("pyproject.toml", "setup.cfg", "README.md", "LICENSE", "servd", "schemas"):
        path = repo / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.exists():
            shutil.copy2(path, source / name)
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-cache-dir", "--disable-pip-version-check"]
    if importlib.util.find_spec("setuptools") is not None:
        command += ["--no-build-isolation", "--no-index"]
    built = subprocess.run(
        [*command, "--target", str(target), str(source)], capture_output=True, text=True, timeout=600
    )
    assert built.returncode == 0, built.stdout + built.stderr
    shutil.copytree(Path(tornado.__file__).parent, deps / "tornado", ignore=shutil.ignore_patterns("__pycache__"))
    return target, deps


async def test_client_only_install_needs_nothing_but_tornado(tmp_path):
    """README's light path: `pip install --no-deps servd` + tornado runs the client and the bench.

    Both the client library and `python -m servd.tools.bench` start without the server's dependencies.
    """
    target, deps = await asyncio.to_thread(install_light, tmp_path / "light")
    env = dict(os.environ, PYTHONPATH=f"{target}{os.pathsep}{deps}")
    async with serve(tmp_path, CONFIG) as d:
        runs = [
            [sys.executable, "-S", "-c", LIGHT_SCRIPT, d.ws_url],
            [
                sys.executable,
                "-S",
                "-m",
                "servd.tools.bench",
                d.ws_url,
                "--endpoint",
                "echo",
                "--requests",
                "5",
                "--json",
            ],
        ]
        outputs = []
        for argv in runs:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            out, err = await asyncio.wait_for(proc.communicate(), 120)
            assert proc.returncode == 0, err.decode()
            outputs.append(out.decode())
    assert outputs[0].strip() == "['torch', 'yaml', 'jsonschema', 'structlog'] 1 2"
    assert json.loads(outputs[1])["levels"][0]["completed"] == 5
