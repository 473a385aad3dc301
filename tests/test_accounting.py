"""The promise (DESIGN.md §4 and §7): every admitted request ends in exactly one terminal message,
under load, rejections, entrypoint failures, cancels and disconnects, and the daemon's own count
of requests agrees with what the clients saw."""

from __future__ import annotations

import asyncio
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.harness import TERMINAL, Running, WsClient, eventually, serve
from tests.test_ws import GATE

CLIENTS = 50
PER_CLIENT = 20  # 50 x 20 = 1,000 requests
LEAVERS = 5  # clients that disconnect with requests in flight
HOLD_AT = 5  # each client's 6th request goes to the held endpoint
CANCEL_AFTER = 12  # ... and after its 13th a client cancels an earlier request at random
BOUND_S = 90.0

CONFIG = """
version: 1
server:
  drain_timeout_s: 5
endpoints:
  echo:
    entrypoint: examples.echo:echo
    concurrency: 2
  nap:
    entrypoint: examples.faults:sleep
    concurrency: 2
    queue: {max_size: 8}
  odd:
    entrypoint: examples.faults:fail_on_odd
  held:
    entrypoint: tests.test_ws:GATE
    concurrency: 1
"""


@dataclass
class Client:
    """One websocket client's workload and what it saw."""

    number: int
    leaves: bool
    sent: dict[str, tuple[str, Any]] = field(default_factory=dict)  # id -> (endpoint, data)
    ws: WsClient | None = None

    def ids(self) -> list[str]:
        return list(self.sent)

    def first_message(self, id: str) -> dict[str, Any]:
        assert self.ws is not None
        return self.ws.of(id)[0]

    def admitted(self) -> list[str]:
        return [id for id in self.sent if self.first_message(id)["type"] == "queued"]

    def rejected(self) -> list[str]:
        return [id for id in self.sent if self.first_message(id)["type"] != "queued"]


def workload(number: int) -> list[tuple[str, str, Any]]:
    """(id, endpoint, data) for one client: a seeded mix of echo, nap (a short sleep) and odd."""
    rng = random.Random(number)
    plan = []
    for j in range(PER_CLIENT):
        id = f"c{number}-{j}"
        if j == HOLD_AT:
            plan.append((id, "held", id))
            continue
        endpoint = rng.choice(["echo", "nap", "odd"])
        data = {"echo": j, "nap": {"s": 0.005 * rng.randint(1, 3)}, "odd": rng.randrange(100)}[endpoint]
        plan.append((id, endpoint, data))
    return plan


async def run_client(d: Running, client: Client) -> None:
    """Submit the workload (with cancels), then either wait for every result or leave mid-way."""
    ws = client.ws = await d.ws()
    rng = random.Random(1000 + client.number)
    for j, (id, endpoint, data) in enumerate(workload(client.number)):
        client.sent[id] = (endpoint, data)
        await ws.submit(id, endpoint, data)
        if client.leaves:
            continue
        if j == HOLD_AT:
            await ws.send({"type": "cancel", "id": id})  # queued, or running for the first one held
        if j == CANCEL_AFTER:
            earlier = [i for i, (ep, _) in client.sent.items() if ep != "held"]
            await ws.send({"type": "cancel", "id": rng.choice(earlier)})  # whatever state it's in
    for id in client.ids():
        await ws.wait_for(lambda m, id=id: m.get("id") == id)
    if client.leaves:
        ws.close()
        await ws.wait_closed()
        return
    for id in client.admitted():
        await ws.terminal(id)


async def until_idle(d: Running) -> None:
    """Wait (bounded) until no endpoint has a request queued or running."""

    async def every_stats() -> list[dict[str, Any]]:
        return [e["stats"] for e in (await d.http("GET", "/v1/endpoints")).json()["endpoints"]]

    await eventually(every_stats, "every endpoint to be idle", until=all_idle, interval=0.05)


def all_idle(every_stats: list[dict[str, Any]]) -> bool:
    return all(stats["queued"] == 0 and stats["running"] == 0 for stats in every_stats)


def metric_sum(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.M))


def check_connected_client(client: Client) -> Counter[str]:
    """Exactly one terminal per admitted request, one error per rejected one; returns outcomes."""
    assert client.ws is not None
    outcomes: Counter[str] = Counter()
    assert {m["id"] for m in client.ws.messages} <= set(client.sent), "no message without a known id"
    for id in client.admitted():
        messages = client.ws.of(id)
        terminals = [m for m in messages if m["type"] in TERMINAL]
        assert len(terminals) == 1, (id, messages)
        assert messages[-1] is terminals[0], f"{id}: nothing after the terminal message"
        end = terminals[0]
        outcome = end["type"] if end["type"] == "completed" else end["error"]["code"]
        outcomes[outcome] += 1
        endpoint, data = client.sent[id]
        if endpoint == "held":
            assert outcome == "cancelled", (id, end)
        elif endpoint == "odd" and outcome != "cancelled":
            assert outcome == ("endpoint_failed" if data % 2 else "completed"), (id, data, end)
        if outcome == "completed":
            assert end["data"] == data
    for id in client.rejected():
        assert [m["type"] for m in client.ws.of(id)] == ["error"], client.ws.of(id)
        assert client.ws.of(id)[0]["error"]["code"] == "queue_full"
        assert client.sent[id][0] == "nap"
    return outcomes


async def test_every_admitted_request_ends_exactly_once_under_mixed_load(tmp_path):
    """1,000 requests from 50 concurrent websocket clients to echo, a short sleep behind a small
    queue (some rejected), an entrypoint failing on odd inputs and a held endpoint, with about 10%
    cancelled (queued and running) and 5 clients disconnecting with requests in flight: each
    admitted request of a client that stayed got exactly one terminal message, each rejected one
    exactly one error and no queued, and the daemon counted (metrics and request log) exactly the
    admitted requests, those of disconnected clients ending as cancelled unless already done."""
    clients = [Client(n, leaves=n % (CLIENTS // LEAVERS) == 0) for n in range(CLIENTS)]
    async with serve(tmp_path, CONFIG, expect_errors=True) as d:
        with GATE.shut():
            await asyncio.wait_for(asyncio.gather(*(run_client(d, c) for c in clients)), BOUND_S)
            await until_idle(d)
            metrics = (await d.http("GET", "/metrics")).body.decode()
        logged = Counter(e["id"] for e in d.log_events() if e.get("event") == "request")
        outcome_of = {e["id"]: e["outcome"] for e in d.log_events() if e.get("event") == "request"}

    assert sum(len(c.sent) for c in clients) == CLIENTS * PER_CLIENT
    assert sum(c.leaves for c in clients) == LEAVERS
    seen: Counter[str] = Counter()
    for client in clients:
        if not client.leaves:
            seen += check_connected_client(client)
    admitted = [id for c in clients for id in c.admitted()]
    rejected = [id for c in clients for id in c.rejected()]
    assert admitted and rejected, "the mix should both admit and reject"
    assert seen["endpoint_failed"] > 0 and seen["completed"] > 0
    assert seen["cancelled"] >= CLIENTS - LEAVERS, "every held request that was cancelled says so"

    assert metric_sum(metrics, "servd_requests_total") == len(admitted)
    assert metric_sum(metrics, "servd_rejected_total") == len(rejected)
    assert set(logged) == set(admitted), "the request log names exactly the admitted requests"
    assert max(logged.values()) == 1, "each request ended once"

    for client in (c for c in clients if c.leaves):
        assert client.ws is not None
        for id in client.admitted():
            ends = [m for m in client.ws.of(id) if m["type"] in TERMINAL]
            assert len(ends) <= 1
            if not ends:
                assert outcome_of[id] in ("cancelled", "completed", "endpoint_failed"), (id, outcome_of[id])
        held = next(id for id, (ep, _) in client.sent.items() if ep == "held")
        assert outcome_of[held] == "cancelled", "a disconnect cancels what the client left in flight"
