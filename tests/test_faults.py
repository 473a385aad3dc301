"""Model faults: entrypoints that raise, hang, return what JSON can't carry, or fail to load or close (issue 7).

Each fault ends the request it hits with a documented error; the daemon, the other requests and
the slot accounting go on unharmed. The hanging entrypoint is held by the test (like test_ws's
GATE), so "this call is stuck" is a fact the test controls, not a sleep it hopes is long enough.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from typing import Any

import pytest

from examples.faults import Counter
from servd.core.lines import LINE_UP_OVERDUE_S
from servd.runners.entrypoints import EntrypointError
from tests.harness import WAIT_S, Running, WsClient, eventually, serve
from tests.procs import http, kill_group, running, start


class HangOn:
    """Returns its input at once, except "hang", which blocks until the test releases it (bounded)."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.hung = 0
        self.lock = threading.Lock()

    def __call__(self, data: Any) -> Any:
        if data == "hang":
            with self.lock:
                self.hung += 1
            self.released.wait(WAIT_S)
        return data


HANG = HangOn()  # tests.test_faults:HANG

CONFIG = """
version: 1
server:
  drain_timeout_s: 5
endpoints:
  odd:
    entrypoint: examples.faults:fail_on_odd
  hang:
    entrypoint: tests.test_faults:HANG
    concurrency: 2
    queue: {timeout_s: 1.5}
  not_json:
    entrypoint: examples.faults:not_json
  nan:
    entrypoint: examples.hazards:returns_nan
  circular:
    entrypoint: examples.hazards:returns_itself
  exits:
    entrypoint: examples.hazards:exits
  unprintable:
    entrypoint: examples.hazards:raise_unprintable
    concurrency: 1
"""


async def stats(d: Running, endpoint: str) -> dict[str, Any]:
    reply = await d.http("GET", f"/v1/endpoints/{endpoint}")
    assert reply.status == 200
    return dict(reply.json()["stats"])


def terminals(ws: WsClient, id: Any) -> list[dict[str, Any]]:
    return [m for m in ws.of(id) if m["type"] in ("completed", "error")]


# -- raising ---------------------------------------------------------------------------------


async def test_a_raising_entrypoint_fails_its_request_naming_the_exception_and_logs_the_traceback(tmp_path):
    """endpoint_failed on the wire with the entrypoint and the exception's type and message, and no
    traceback; the traceback, with its frames, goes to the log; the next request is served."""
    async with serve(tmp_path, CONFIG, expect_errors=True) as d:
        ws = await d.ws()
        await ws.submit("bad", "odd", 3)
        error = (await ws.terminal("bad"))["error"]
        assert error["code"] == "endpoint_failed"
        assert error["message"] == "examples.faults:fail_on_odd raised ValueError: odd input 3"
        logged = [e for e in d.log_events() if e["event"] == "entrypoint raised"]
        assert len(logged) == 1 and logged[0]["level"] == "error" and logged[0]["id"] == "bad"
        (exception,) = logged[0]["exception"]
        assert exception["exc_type"] == "ValueError" and exception["exc_value"] == "odd input 3"
        assert any(frame["filename"].endswith("examples/faults.py") for frame in exception["frames"])
        await ws.submit("good", "odd", 4)
        assert (await ws.terminal("good"))["data"] == 4


async def test_an_entrypoint_calling_sys_exit_fails_its_request_and_the_daemon_serves_on(tmp_path):
    """SystemExit inside a call is not an Exception, but it still only fails that request."""
    async with serve(tmp_path, CONFIG, expect_errors=True) as d:
        ws = await d.ws()
        await ws.submit(1, "exits", None)
        error = (await ws.terminal(1))["error"]
        assert error["code"] == "endpoint_failed" and "SystemExit" in error["message"]
        await ws.submit(2, "odd", 2)
        assert (await ws.terminal(2))["data"] == 2
        assert d.daemon.ready and not d.daemon.shutting_down


async def test_an_exception_that_cannot_be_printed_still_ends_its_request_and_the_queue_moves(tmp_path):
    """An exception whose str() raises still ends its request with endpoint_failed, and the request
    queued behind it runs (DESIGN.md §3: the dispatcher cannot die; the queue keeps moving).
    Regression: Endpoint._describe_failure formatted the exception on the loop, and the error escaped
    _on_done, leaving the request without a terminal and the next one stuck in the queue."""
    async with serve(tmp_path, CONFIG, expect_errors=True) as d:
        ws = await d.ws()
        await ws.submit("broken", "unprintable", None)
        await ws.submit("behind", "unprintable", None)
        first = await ws.terminal("broken", timeout=5)
        assert first["type"] == "error" and first["error"]["code"] == "endpoint_failed", first
        assert "UnprintableError" in first["error"]["message"]
        second = await ws.terminal("behind", timeout=5)
        assert second["error"]["code"] == "endpoint_failed"


# -- hanging ---------------------------------------------------------------------------------


async def test_a_call_hung_past_timeout_ends_its_request_and_keeps_its_slot_counted(tmp_path):
    """With concurrency 2 and one call hung past queue.timeout_s: its request ends with timeout (once);
    the call is reported stuck ("call abandoned" in the log, stats.stuck and servd_stuck_calls) and
    still occupies a worker (workers 1, running 0); the other slot keeps serving; with both slots hung
    a new request waits, then times out in the queue; once the calls return, the slots are free again,
    nothing is reported stuck, and the late results send nothing."""
    HANG.released.clear()
    HANG.hung = 0
    try:
        async with serve(tmp_path, CONFIG) as d:
            ws = await d.ws()
            await ws.submit("stuck", "hang", "hang")
            ended = await ws.terminal("stuck")
            assert ended["error"]["code"] == "timeout"
            assert "passed while running" in ended["error"]["message"]
            now = await stats(d, "hang")
            assert (now["running"], now["workers"], now["workers_max"], now["stuck"]) == (0, 1, 2, 1), now
            assert 'servd_stuck_calls{endpoint="hang"} 1.0' in (await d.http("GET", "/metrics")).body.decode()
            abandoned = [e for e in d.log_events() if e["event"] == "call abandoned"]
            assert len(abandoned) == 1 and abandoned[0]["endpoint"] == "hang"

            for i in range(5):
                await ws.submit(i, "hang", i)
                assert (await ws.terminal(i))["data"] == i, "the free slot serves while the other is stuck"

            await ws.submit("stuck-2", "hang", "hang")
            await ws.wait_for(lambda m: m.get("id") == "stuck-2" and m["type"] == "started")
            # A request arriving within LINE_UP_OVERDUE_S of a short call's start may be lined up behind
            # it (core.lines); this one is to wait in the queue, so it comes once the call is overdue.
            await asyncio.sleep(LINE_UP_OVERDUE_S * 4)
            await ws.submit("waits", "hang", "waits")
            assert (await ws.terminal("stuck-2"))["error"]["code"] == "timeout"
            waited = await ws.terminal("waits")
            assert waited["error"]["code"] == "timeout" and "waiting in the queue" in waited["error"]["message"]
            assert "started" not in [m["type"] for m in ws.of("waits")]
            now = await stats(d, "hang")
            assert (now["running"], now["queued"], now["workers"], now["stuck"]) == (0, 0, 2, 2), now

            HANG.released.set()

            async def slots_free() -> bool:
                return (await stats(d, "hang"))["workers"] == 0

            await eventually(slots_free, "the hung calls to return")
            assert (await stats(d, "hang"))["stuck"] == 0
            await ws.submit("after", "hang", "after")
            assert (await ws.terminal("after"))["data"] == "after"
            for id in ("stuck", "stuck-2", "waits"):
                assert len(terminals(ws, id)) == 1, ws.of(id)
            ends = [e for e in d.log_events() if e["event"] == "request" and e["id"] in ("stuck", "stuck-2")]
            assert [e["outcome"] for e in ends] == ["timeout", "timeout"]
    finally:
        HANG.released.set()


SHARED_POOL = """
version: 1
server:
  max_threads: 2
  drain_timeout_s: 1
endpoints:
  hang:
    entrypoint: tests.test_faults:HANG
    concurrency: 2
    queue: {timeout_s: 0.5}
  echo:
    entrypoint: examples.echo:echo
"""


async def test_calls_hung_past_their_timeout_do_not_starve_other_endpoints_of_threads(tmp_path):
    """Two calls of one endpoint hang past queue.timeout_s and hold both of server.max_threads=2
    threads: another endpoint's request must still run (and must not be told "started" while it waits
    for a thread). Regression: the shared pool counted stuck threads as busy forever (workers.py _Pool), so
    echo's request sat in the pool's queue, was reported started, and ended "timeout ... while running"
    without ever running; one hung model took every endpoint down with it."""
    HANG.released.clear()
    try:
        async with serve(tmp_path, SHARED_POOL) as d:
            ws = await d.ws()
            for id in ("a", "b"):
                await ws.submit(id, "hang", "hang")
            for id in ("a", "b"):
                assert (await ws.terminal(id))["error"]["code"] == "timeout"
            await ws.submit("e", "echo", "served")
            done = await ws.terminal("e", timeout=5)
            assert done["type"] == "completed" and done["data"] == "served", done
    finally:
        HANG.released.set()


# -- returning what JSON can't carry -----------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "says"),
    [
        ("not_json", "Object of type set is not JSON serializable"),
        ("nan", "Out of range float values are not JSON compliant"),
        ("circular", "Circular reference detected"),
    ],
)
async def test_a_result_json_cannot_carry_fails_with_a_clear_error(tmp_path, endpoint, says):
    """A set, NaN or a self-containing list as the result: endpoint_failed saying the value is not JSON
    and why, over websocket and HTTP; logged as a broken contract; the daemon serves on."""
    async with serve(tmp_path, CONFIG, expect_errors=True) as d:
        ws = await d.ws()
        await ws.submit(1, endpoint, None)
        error = (await ws.terminal(1))["error"]
        assert error["code"] == "endpoint_failed"
        assert "not JSON" in error["message"] and says in error["message"], error
        reply = await d.post(endpoint, None)
        assert reply.status == 500 and reply.json()["error"]["code"] == "endpoint_failed"
        assert [e["event"] for e in d.errors_logged()] == ["entrypoint broke its contract"] * 2
        assert (await d.post("odd", 2)).json()["data"] == 2


# -- close() and __init__ ------------------------------------------------------------------------

CLOSES_BADLY = """
version: 1
server:
  drain_timeout_s: 5
endpoints:
  closes_badly:
    entrypoint: examples.hazards:CloseRaises
"""


async def test_a_close_that_raises_is_logged_and_shutdown_still_completes(tmp_path):
    """A model whose close() raises: shutdown logs "model close() raised" with the traceback, and
    still finishes ("stopped")."""
    async with serve(tmp_path, CLOSES_BADLY, expect_errors=True) as d:
        assert (await d.post("closes_badly", "x")).json()["data"] == "x"
        await asyncio.wait_for(d.daemon.shutdown(), 30)
    events = d.log_events()
    failed = [e for e in events if e["event"] == "model close() raised"]
    assert len(failed) == 1 and failed[0]["endpoint"] == "closes_badly"
    assert failed[0]["exception"][0]["exc_value"] == "close failed (on purpose)"
    assert [e["event"] for e in events][-1] == "stopped"


def test_servd_run_exits_0_on_sigterm_even_when_a_close_raises(tmp_path):
    """`servd run`: SIGTERM with a model whose close() raises still drains, logs it and exits 0."""
    with running(tmp_path, CLOSES_BADLY) as daemon:
        assert http(daemon.port, "POST", "/v1/endpoints/closes_badly", {"data": 1}).body["data"] == 1
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(WAIT_S) == 0
        events = [e["event"] for e in daemon.log_events()]
        assert "model close() raised" in events and events[-1] == "stopped"


async def test_a_constructor_that_raises_fails_the_start_naming_it_and_closes_what_loaded(tmp_path):
    """A class entrypoint whose __init__ raises: start fails with an error naming the class, the
    exception and its message, and the model another endpoint had already loaded is closed."""
    config = """
    version: 1
    endpoints:
      counter:
        entrypoint: examples.faults:Counter
      broken:
        entrypoint: examples.faults:FailsToLoad
    """
    Counter.closed.clear()
    with pytest.raises(EntrypointError) as failed:
        async with serve(tmp_path, config):
            pass
    assert "examples.faults:FailsToLoad() raised RuntimeError: weights file missing" in str(failed.value)
    await eventually(lambda: Counter.closed == ["cpu"], "the loaded model to be closed")


def test_servd_run_exits_non_zero_when_a_constructor_calls_sys_exit(tmp_path):
    """A model whose __init__ calls sys.exit(0) (argparse on sys.argv does) must not look like a clean
    stop: `servd run` exits 1 with "start failed" naming the class, so systemd restarts or reports it.
    Regression: only Exception was caught around model loading, so SystemExit(0) ended servd with 0."""
    config = "version: 1\nendpoints:\n  exits:\n    entrypoint: examples.hazards:ExitsInInit\n"
    proc = start(tmp_path, config)
    try:
        code = proc.wait(WAIT_S)
    finally:
        kill_group(proc)
    output = (tmp_path / "servd.log").read_text("utf-8")
    assert code == 1, f"exit code {code}; log: {output[-2000:]}"
    assert "start failed" in output and "ExitsInInit" in output, output[-2000:]
