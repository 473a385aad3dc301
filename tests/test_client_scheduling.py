"""servd.client's `priority=` and `deadline_s=` (#12) against the real daemon, on both transports.

A request's level shows in its rank and in /v1/endpoints' `queued_by_priority`; a deadline that
passes, or that `queue.admit: predicted` sees can't be met, reaches the caller as the client's
existing Timeout and QueueFull.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from servd.client import AsyncClient, BadRequest, Client, QueueFull, Timeout
from servd.client.aio import scheduling_fields
from tests.harness import WAIT_S, Running, eventually, serve

CONFIG = """
version: 1
endpoints:
  levels:
    entrypoint: examples.faults:sleep
    queue: {priority_levels: 3}
  words:
    entrypoint: examples.stream:words
    queue: {priority_levels: 2}
  timed:
    entrypoint: examples.faults:sleep
    queue: {admit: predicted}
"""

TRANSPORTS = pytest.mark.parametrize("transport", ["ws", "http"])
BLOCK_S = 1.0  # how long a blocking request holds an endpoint's only slot


async def queued_by_priority(d: Running, endpoint: str) -> dict[str, int]:
    stats: dict[str, Any] = (await d.http("GET", f"/v1/endpoints/{endpoint}")).json()["stats"]
    return stats["queued_by_priority"]  # type: ignore[no-any-return]


async def running_blocker(client: AsyncClient, endpoint: str) -> Any:
    blocker = await client.submit(endpoint, BLOCK_S)
    await eventually(lambda: blocker.status().state, "the blocker to run", until=lambda s: s == "running")
    return blocker


@TRANSPORTS
async def test_a_request_waits_at_the_level_it_asked_for(tmp_path, transport):
    """Behind a running call: no priority waits at the default (lowest) level, priority=2 and
    priority=1 go ahead of it in that order, and the earlier arrivals are told their new ranks."""
    async with serve(tmp_path, CONFIG) as d, AsyncClient(d.ws_url, transport=transport) as client:
        blocker = await running_blocker(client, "levels")
        default = await client.submit("levels", 0.05)
        middle = await client.submit("levels", 0.05, priority=2)
        high = await client.submit("levels", 0.05, priority=1)
        assert high.status().rank == 0
        assert await queued_by_priority(d, "levels") == {"1": 1, "2": 1, "3": 1}
        await eventually(
            lambda: (middle.status().rank, default.status().rank), "new ranks", until=lambda r: r == (1, 2)
        )
        assert await blocker.result(timeout=WAIT_S) == BLOCK_S
        for job in (high, middle, default):
            assert await job.result(timeout=WAIT_S) == 0.05
        waits = [job.timing["queue_s"] for job in (high, middle, default)]  # type: ignore[index]
        assert waits == sorted(waits), "the highest level ran first though it arrived last"


@TRANSPORTS
async def test_a_level_the_endpoint_lacks_raises_bad_request(tmp_path, transport):
    """priority past queue.priority_levels is refused with BadRequest naming the setting."""
    async with serve(tmp_path, CONFIG) as d, AsyncClient(d.ws_url, transport=transport) as client:
        with pytest.raises(BadRequest, match=r"queue.priority_levels=3"):
            await client.predict("levels", 0, priority=4)
        assert await client.predict("levels", 0, priority=3) == 0


@TRANSPORTS
async def test_a_level_above_the_tokens_raises_bad_request(tmp_path, transport):
    """A token limited to priority=2 that asks for 1 gets BadRequest; asking for 2 is served."""
    (tmp_path / "tokens.txt").write_text("batch-job priority=2\n")
    config = CONFIG.replace("version: 1\n", "version: 1\nserver: {tokens_file: tokens.txt}\n")
    async with serve(tmp_path, config) as d, AsyncClient(d.ws_url, "batch-job", transport=transport) as client:
        with pytest.raises(BadRequest, match="highest level is 2"):
            await client.predict("levels", 0, priority=1)
        assert await client.predict("levels", 0, priority=2) == 0


@TRANSPORTS
async def test_a_deadline_that_passes_while_waiting_raises_timeout(tmp_path, transport):
    """deadline_s ends a request still waiting with Timeout, naming the deadline; the call before it goes on."""
    async with serve(tmp_path, CONFIG) as d, AsyncClient(d.ws_url, transport=transport) as client:
        blocker = await running_blocker(client, "levels")
        with pytest.raises(Timeout, match=r"deadline_s=0.2 passed while waiting in the queue"):
            await client.predict("levels", 0, deadline_s=0.2)
        assert await blocker.result(timeout=WAIT_S) == BLOCK_S


@TRANSPORTS
async def test_predicted_admission_refuses_a_doomed_deadline_with_queue_full(tmp_path, transport):
    """Under queue.admit: predicted, once a call was timed, a deadline shorter than the ETA is
    refused at once with QueueFull (over HTTP with Retry-After), and the request never runs."""
    async with serve(tmp_path, CONFIG) as d, AsyncClient(d.ws_url, transport=transport) as client:
        assert await client.predict("timed", 0.3) == 0.3  # times a call: the ETA is now about 0.3 s
        with pytest.raises(QueueFull, match="past its deadline") as caught:
            await client.predict("timed", 0.3, deadline_s=0.05)
        if transport == "http":
            assert caught.value.retry_after_s is not None and caught.value.retry_after_s >= 1
        assert await client.predict("timed", 0, deadline_s=5) == 0
        outcomes = (await d.http("GET", "/v1/endpoints/timed")).json()["stats"]["outcomes"]
        assert outcomes == {"completed": 2}


async def test_bad_values_are_refused_before_anything_is_sent(tmp_path):
    """A priority below 0 or not an integer, or a deadline_s not a positive finite number: ValueError, no connection."""
    async with serve(tmp_path, CONFIG) as d, AsyncClient(d.ws_url) as client:
        for bad in (
            {"priority": -1},
            {"priority": True},
            {"priority": 1.0},
            {"deadline_s": 0},
            {"deadline_s": math.nan},
        ):
            with pytest.raises(ValueError, match=r"^(priority|deadline_s) must be"):
                await client.predict("levels", 0, **bad)
        assert len(d.daemon.connections) == 0


def test_fields_are_sent_only_when_given():
    """Neither given: nothing new on the wire, so servers before #12 see the same messages."""
    assert scheduling_fields(None, None) == ""
    assert scheduling_fields(0, None) == ',"priority":0'
    assert scheduling_fields(2, 1) == ',"priority":2,"deadline_s":1.0'


async def test_sync_client_passes_priority_and_deadline(tmp_path):
    """The blocking Client takes the same keywords on predict, submit and stream."""
    async with serve(tmp_path, CONFIG) as d:

        def use() -> dict[str, Any]:
            with Client(d.ws_url) as client:
                blocker = client.submit("levels", BLOCK_S, priority=3)
                job = client.submit("levels", 0, priority=1, deadline_s=WAIT_S)
                seen: dict[str, Any] = {"rank": job.status().rank}
                try:
                    client.predict("levels", 0, deadline_s=0.1)
                except Timeout as exc:
                    seen["timeout"] = exc.code
                seen["stream"] = list(client.stream("words", "a b", priority=1, deadline_s=WAIT_S))
                seen["results"] = [blocker.result(timeout=WAIT_S), job.result(timeout=WAIT_S)]
                return seen

        seen = await asyncio.to_thread(use)
        assert seen == {"rank": 0, "timeout": "timeout", "stream": ["a", "a b"], "results": [BLOCK_S, 0]}
