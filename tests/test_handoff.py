"""The hand-over between the loop and the worker threads (issue 13): what it promises users.

The model runs on a worker thread, never on the loop; that thread is a SCHED_BATCH thread on
Linux (it waits for the loop to block instead of preempting it); results come back through an
eventfd that each daemon registers and closes; a call that outlives its daemon finishes quietly.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
from typing import Any

import pytest

from tests.harness import WAIT_S, eventually, serve


def where(data: Any) -> dict[str, Any]:
    """tests.test_handoff:where - which thread ran the call, and its scheduling policy."""
    policy = os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else None
    return {"thread": threading.current_thread().name, "policy": policy, "echo": data}


class Gate:
    """Blocks a call until the test opens it (bounded), so "still running" is a fact, not a sleep."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.entered = threading.Event()
        self.finished = threading.Event()
        self.thread: threading.Thread | None = None  # the worker that ran the last call

    def __call__(self, data: Any) -> Any:
        self.thread = threading.current_thread()
        self.entered.set()
        self.opened.wait(WAIT_S)
        self.finished.set()
        return data


GATE = Gate()  # tests.test_handoff:GATE


class Line:
    """Records the inputs it ran and the most calls it ran at once; "gate" blocks until opened."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.lock = threading.Lock()
        self.inside = self.most_inside = 0
        self.seen: list[Any] = []
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self, data: Any) -> Any:
        with self.lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.seen.append(data)
        try:
            if data == "gate":
                self.entered.set()
                self.opened.wait(WAIT_S)
            return data
        finally:
            with self.lock:
                self.inside -= 1


LINE_1, LINE_2 = Line(), Line()  # tests.test_handoff:LINE_1 (concurrency 1), LINE_2 (concurrency 2)

CONFIG = """
version: 1
server: {drain_timeout_s: 0.2}
endpoints:
  where:
    entrypoint: tests.test_handoff:where
    concurrency: 1
  gate:
    entrypoint: tests.test_handoff:GATE
    concurrency: 1
  line1:
    entrypoint: tests.test_handoff:LINE_1
    concurrency: 1
  line2:
    entrypoint: tests.test_handoff:LINE_2
    concurrency: 2
"""


async def test_the_model_runs_on_a_worker_thread_that_does_not_preempt_the_loop(tmp_path: Any) -> None:
    """A request's answer shows the model ran on one of servd's worker threads, not the thread serving HTTP, and
    on Linux under SCHED_BATCH, so it waits for the loop to block instead of preempting it."""
    async with serve(tmp_path, CONFIG) as d:
        reply = await d.http("POST", "/v1/endpoints/where", {"data": 7})
        assert reply.status == 200
        shown = reply.json()["data"]
        assert shown["echo"] == 7
        assert shown["thread"].startswith("servd-worker"), shown
        assert threading.current_thread().name != shown["thread"]
        if sys.platform.startswith("linux"):
            assert shown["policy"] == os.SCHED_BATCH, shown


async def test_every_request_at_concurrency_1_ends_once_with_its_own_result(tmp_path: Any) -> None:
    """32 websocket clients with 25 requests each on a one-slot endpoint: every request completes once, with its
    own data, in the order its client sent it, and the endpoint counts all 800."""
    clients, each = 32, 25
    async with serve(tmp_path, CONFIG) as d:

        async def one_client(c: int) -> list[dict[str, Any]]:
            ws = await d.ws()
            for i in range(each):
                await ws.send({"type": "submit", "id": i, "endpoint": "where", "data": [c, i]})
            return [await ws.terminal(i) for i in range(each)]

        results = await asyncio.wait_for(asyncio.gather(*(one_client(c) for c in range(clients))), WAIT_S * 3)
        for c, terminals in enumerate(results):
            assert [t["type"] for t in terminals] == ["completed"] * each
            assert [t["data"]["echo"] for t in terminals] == [[c, i] for i in range(each)]
        counts = (await d.http("GET", "/v1/endpoints")).json()
        where_ep = next(e for e in counts["endpoints"] if e["name"] == "where")
        assert where_ep["stats"]["completed"] == clients * each, where_ep["stats"]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
async def test_daemons_started_and_stopped_leave_no_file_descriptor_behind(tmp_path: Any) -> None:
    """Eight daemons started, used and stopped in one process leave no descriptor open (each one's wake-up
    eventfd is closed with it)."""
    async with serve(tmp_path, CONFIG) as d:  # the first one imports and opens what stays open
        assert (await d.http("POST", "/v1/endpoints/where", {"data": 0})).status == 200
    before = _open_fds()
    for i in range(8):
        async with serve(tmp_path, CONFIG) as d:
            assert (await d.http("POST", "/v1/endpoints/where", {"data": i})).status == 200
    await eventually(_open_fds, f"open descriptors back to {before}", until=lambda n: n <= before)


async def test_a_call_that_outlives_its_daemon_finishes_without_touching_another_descriptor(tmp_path: Any) -> None:
    """A call still running when its daemon stops (the drain gave up) finishes later without writing its wake-up
    into whatever socket took the closed eventfd's number: the sockets opened since read nothing once its
    worker thread has reported and ended."""
    GATE.opened.clear()
    GATE.entered.clear()
    GATE.finished.clear()
    try:
        async with serve(tmp_path, CONFIG, expect_errors=True) as d:
            ws = await d.ws()
            await ws.send({"type": "submit", "id": 1, "endpoint": "gate", "data": "late"})
            await asyncio.to_thread(GATE.entered.wait, WAIT_S)
        # The daemon is stopped (its drain gave up after 0.2 s); its wake-up descriptor is closed.
        # Sockets opened now may take its number: the late result must not be written into them.
        pairs = [socket.socketpair() for _ in range(8)]
        try:
            GATE.opened.set()
            assert await asyncio.to_thread(GATE.finished.wait, WAIT_S)
            worker = GATE.thread
            assert worker is not None
            # The worker reports (its wake-up, the write that must not land in a socket) after the
            # call returns, then takes the stop its pool was sent at shutdown and ends.
            await asyncio.to_thread(worker.join, WAIT_S)
            assert not worker.is_alive(), "the worker reported and ended"
            for end in (end for pair in pairs for end in pair):
                end.setblocking(False)
                with pytest.raises(BlockingIOError):
                    end.recv(64)
        finally:
            for a, b in pairs:
                a.close()
                b.close()
    finally:
        GATE.opened.set()


async def _stats(d: Any, name: str) -> dict[str, Any]:
    listed = (await d.http("GET", "/v1/endpoints")).json()["endpoints"]
    return next(e for e in listed if e["name"] == name)["stats"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("endpoint", "line", "concurrency"),
    [("line1", LINE_1, 1), ("line2", LINE_2, 2)],
    ids=["concurrency 1", "concurrency 2"],
)
async def test_short_calls_line_up_behind_the_running_ones_without_ever_running_more_at_once(
    tmp_path: Any, endpoint: str, line: Line, concurrency: int
) -> None:
    """Many clients, each with many requests in flight, on an endpoint whose calls take
    microseconds: requests line up behind the running calls (stats.lined_up counts them), yet no
    more than `concurrency` calls ever run at once, each request ends once with its own result,
    and at concurrency 1 each client's requests complete in the order they were sent."""
    line.reset()
    clients, each = 16, 40
    async with serve(tmp_path, CONFIG) as d:
        await d.post(endpoint, "warm")  # the first call's time is what lets calls line up

        async def one_client(c: int) -> list[dict[str, Any]]:
            ws = await d.ws()
            for i in range(each):
                await ws.submit(i, endpoint, [c, i])
            ends = [await ws.terminal(i) for i in range(each)]
            if concurrency == 1:
                order = [m["id"] for m in ws.terminals()]
                assert order == list(range(each)), f"client {c} completed out of order: {order}"
            ws.close()
            return ends

        results = await asyncio.wait_for(asyncio.gather(*(one_client(c) for c in range(clients))), WAIT_S * 3)
        for c, ends in enumerate(results):
            assert [(t["type"], t["data"]) for t in ends] == [("completed", [c, i]) for i in range(each)]
        stats = await _stats(d, endpoint)
        assert stats["completed"] == clients * each + 1, stats
        assert stats["lined_up"] > 0, stats
        assert stats["workers"] == 0 and stats["running"] == 0, stats
    assert line.most_inside <= concurrency, f"{line.most_inside} calls ran at once on concurrency {concurrency}"
    assert len(line.seen) == clients * each + 1


async def test_a_lined_up_request_can_be_cancelled_or_time_out_and_never_reaches_the_model(tmp_path: Any) -> None:
    """Requests that arrive while the only slot runs a short call are lined up behind it: each is
    `started` (it runs next on that thread, without waiting for the loop). One cancelled, or one
    whose deadline passes, while the call before them still runs ends once with its error, and the
    model never sees it; the others complete in order once that call returns, their wait in line
    counted in `timing.queue_s`."""
    LINE_1.reset()
    async with serve(tmp_path, CONFIG) as d:
        for i in range(5):
            await d.post("line1", i)  # short calls: what the line's depth is judged by
        ws = await d.ws()
        await ws.submit("gate", "line1", "gate", progress=True)
        for name in "abc":
            await ws.submit(name, "line1", name, progress=True)
        await ws.submit("d", "line1", "d", progress=True, deadline_s=0.3)
        for name in "abcd":
            await ws.wait_for(lambda m, name=name: m.get("id") == name and m["type"] == "started")
        assert await asyncio.to_thread(LINE_1.entered.wait, WAIT_S)
        await ws.send({"type": "cancel", "id": "b"})
        cancelled = await ws.terminal("b")
        assert cancelled["type"] == "error" and cancelled["error"]["code"] == "cancelled", cancelled
        late = await ws.terminal("d")
        assert late["type"] == "error" and late["error"]["code"] == "timeout", late
        stats = await _stats(d, "line1")
        assert stats["workers"] == 1 and stats["lined_up"] >= 4, stats  # one call holds the thread
        LINE_1.opened.set()
        for name in ("gate", "a", "c"):
            assert (await ws.terminal(name))["data"] == name
        for name in ("a", "c"):  # their wait in line, behind the gate (>= d's 0.3 s deadline), is queue time
            assert (await ws.terminal(name))["timing"]["queue_s"] >= 0.3, ws.of(name)
        for name in ("gate", "a", "b", "c", "d"):
            assert len([m for m in ws.of(name) if m in ws.terminals()]) == 1, ws.of(name)
        assert [m["id"] for m in ws.terminals()] == ["b", "d", "gate", "a", "c"]
    assert LINE_1.seen == [0, 1, 2, 3, 4, "gate", "a", "c"], LINE_1.seen  # c ran after where b and d stood
