"""Rank and ETA on a steady workload (DESIGN.md §3 and §7): the eta_s a request is given when it is
admitted comes true within 25% for ranks of 3 and more, and estimations follow rank changes at a
bounded rate."""

from __future__ import annotations

import asyncio
from itertools import pairwise
from typing import Any

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from tests.harness import Running, WsClient, serve

NAP_S = 0.05
BURST = 12

CONFIG = """
version: 1
endpoints:
  nap:
    entrypoint: examples.faults:sleep
    concurrency: 1
"""


class StampedClient(WsClient):
    """A WsClient that also notes the loop time each message arrived at (as "at")."""

    def _parse(self, text: str) -> dict[str, Any]:
        message = super()._parse(text)
        message["at"] = asyncio.get_running_loop().time()
        return message


async def stamped(d: Running) -> StampedClient:
    client = StampedClient(await websocket_connect(HTTPRequest(d.ws_url + "/v1/ws")))
    d.clients.append(client)
    return client


async def warm_then_burst(d: Running) -> tuple[StampedClient, dict[int, float]]:
    """Time a few calls one by one (the ETA's batch time), then submit BURST requests at once;
    returns the client and when each burst request was sent."""
    ws = await stamped(d)
    for i in range(6):
        await ws.submit(f"warm{i}", "nap", NAP_S, progress=False)
        await ws.terminal(f"warm{i}")
    loop = asyncio.get_running_loop()
    sent: dict[int, float] = {}
    for id in range(BURST):
        sent[id] = loop.time()
        await ws.submit(id, "nap", NAP_S)
    for id in range(BURST):
        assert (await ws.terminal(id))["type"] == "completed"
    return ws, sent


def first_of(ws: WsClient, id: Any, kind: str) -> dict[str, Any]:
    return next(m for m in ws.of(id) if m["type"] == kind)


async def test_eta_at_admission_is_within_25_percent_for_rank_3_and_more(tmp_path):
    """On a steady single-worker endpoint, each request admitted at rank >= 3 is given an eta_s in its
    queued message within 25% of the time it actually took from submit to completed."""
    async with serve(tmp_path, CONFIG) as d:
        ws, sent = await warm_then_burst(d)
        checked = []
        for id in range(BURST):
            queued = first_of(ws, id, "queued")
            if queued["rank"] < 3:
                continue
            actual = first_of(ws, id, "completed")["at"] - sent[id]
            checked.append((id, queued["rank"], queued["eta_s"], round(actual, 3)))
        assert len(checked) >= 3, checked
        misses = [c for c in checked if abs(c[2] - c[3]) > 0.25 * c[3]]
        assert misses == [], f"(id, rank, eta_s, actual_s) off by more than 25%: {misses} of {checked}"


async def test_queued_message_gives_rank_queue_size_and_eta(tmp_path):
    """Each queued message carries the request's rank (0 = next), the queue's size and, once batch
    times are known, an eta_s that grows with rank."""
    async with serve(tmp_path, CONFIG) as d:
        ws, _ = await warm_then_burst(d)
        queued = [first_of(ws, id, "queued") for id in range(BURST)]
        for message in queued:
            assert 0 <= message["rank"] < message["queue_size"]
        etas = [m["eta_s"] for m in queued]
        assert all(isinstance(eta, float) for eta in etas)
        assert etas[-1] > etas[0]


async def test_estimations_follow_rank_changes_at_most_about_four_a_second(tmp_path):
    """While a request waits it gets an estimation each time its rank has changed (never the same rank
    twice, ranks only go down), no more often than about 4 a second, and none once it has started."""
    async with serve(tmp_path, CONFIG) as d:
        ws, _ = await warm_then_burst(d)
        for id in range(BURST):
            messages = ws.of(id)
            queued = messages[0]
            assert queued["type"] == "queued"
            estimations = [m for m in messages if m["type"] == "estimation"]
            started_at = first_of(ws, id, "started")["at"]
            ranks = [queued["rank"]] + [m["rank"] for m in estimations]
            assert all(later < earlier for earlier, later in pairwise(ranks)), (id, ranks)
            assert all(m["at"] <= started_at for m in estimations)
            if queued["rank"] >= 1:
                assert estimations, f"request {id} admitted at rank {queued['rank']} heard no estimation"
            gaps = [b["at"] - a["at"] for a, b in pairwise(estimations)]
            assert all(gap >= 0.15 for gap in gaps), (id, gaps)
            waited = started_at - queued["at"]
            assert len(estimations) <= 4 * waited + 2, (id, len(estimations), waited)
