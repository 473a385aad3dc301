"""The test helpers themselves: bounded polling (tests/harness.py), the in-process daemon's
sockets, and the `servd run` helpers of tests/procs.py."""

from __future__ import annotations

import gc
import itertools
import socket

import pytest

from tests.harness import eventually, eventually_sync, serve
from tests.procs import closed_port, http, running

ECHO = """
version: 1
endpoints:
  echo:
    entrypoint: examples.echo:echo
"""


async def test_eventually_returns_the_first_value_that_satisfies_until():
    """Polling stops at the first value `until` accepts, and that value is returned."""
    counter = itertools.count()
    assert await eventually(lambda: next(counter), "the count to reach 3", until=lambda n: n >= 3) == 3


async def test_eventually_awaits_a_coroutine_function_and_defaults_to_truthy():
    """A coroutine function is awaited each time; without `until`, the first truthy value wins."""
    values = iter([None, 0, "", "ready"])

    async def probe() -> str | int | None:
        return next(values)

    assert await eventually(probe, "a truthy value") == "ready"


async def test_eventually_fails_naming_what_it_waited_for_and_the_last_value():
    """Past the timeout: an AssertionError with `what` and the last value seen, for the test's report."""
    with pytest.raises(AssertionError, match=r"timed out after 0\.05s waiting for the answer; last value: 41"):
        await eventually(lambda: 41, "the answer", until=lambda n: n == 42, timeout=0.05)


def test_eventually_sync_polls_and_fails_the_same_way():
    """The blocking twin, for tests that drive a `servd run` process without an event loop."""
    counter = itertools.count()
    assert eventually_sync(lambda: next(counter), "2", until=lambda n: n == 2) == 2
    with pytest.raises(AssertionError, match=r"waiting for a miracle; last value: False"):
        eventually_sync(lambda: False, "a miracle", timeout=0.05)


async def test_serve_without_start_closes_the_socket_it_bound(tmp_path):
    """serve(start=False) binds a socket the daemon never takes; leaving closes it. (A socket left to
    the garbage collector warns, and under filterwarnings=error that fails the test that collects it.)"""
    async with serve(tmp_path, ECHO, start=False) as d:
        assert not d.daemon.ready
    gc.collect()


def test_closed_port_refuses_connections():
    """closed_port() is a port where nothing listens, held so nothing else can take it meanwhile."""
    with closed_port() as port, socket.socket() as client, pytest.raises(ConnectionRefusedError):
        client.connect(("127.0.0.1", port))


def test_running_servd_reports_the_port_it_picked(tmp_path):
    """`servd run --port 0` is reached on the port its "listening" log event names, once /readyz says ready."""
    with running(tmp_path, ECHO) as daemon:
        listening = [e for e in daemon.log_events() if e.get("event") == "listening"]
        assert [e["url"] for e in listening] == [daemon.url] == [f"http://127.0.0.1:{daemon.port}"]
        assert http(daemon.port, "POST", "/v1/endpoints/echo", {"data": "hi"}).body["data"] == "hi"
