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

    def __call__(self, data: Any) -> Any:
        self.entered.set()
        self.opened.wait(WAIT_S)
        self.finished.set()
        return data


GATE = Gate()  # tests.test_handoff:GATE

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
"""


async def test_the_model_runs_on_a_worker_thread_that_does_not_preempt_the_loop(tmp_path: Any) -> None:
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
    async with serve(tmp_path, CONFIG) as d:  # the first one imports and opens what stays open
        assert (await d.http("POST", "/v1/endpoints/where", {"data": 0})).status == 200
    before = _open_fds()
    for i in range(8):
        async with serve(tmp_path, CONFIG) as d:
            assert (await d.http("POST", "/v1/endpoints/where", {"data": i})).status == 200
    await eventually(_open_fds, f"open descriptors back to {before}", until=lambda n: n <= before)


async def test_a_call_that_outlives_its_daemon_finishes_without_touching_another_descriptor(tmp_path: Any) -> None:
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
            await asyncio.sleep(0.2)  # the worker reports after the call returns
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
