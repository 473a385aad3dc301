"""Queue limits as clients see them: max_size, max_per_client, timeout_s, concurrency (DESIGN.md §3)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.harness import WsClient, serve
from tests.test_ws import GATE

CONFIG = """
version: 1
server:
  drain_timeout_s: 5
endpoints:
  bounded:
    entrypoint: tests.test_ws:GATE
    concurrency: 1
    queue: {max_size: 3}
  expiring:
    entrypoint: tests.test_ws:GATE
    concurrency: 1
    queue: {timeout_s: 0.5}
  parallel:
    entrypoint: examples.faults:sleep
    concurrency: 3
"""

PER_CLIENT = """
version: 1
server:
  tokens_file: tokens.txt
  drain_timeout_s: 5
endpoints:
  shared:
    entrypoint: tests.test_ws:GATE
    concurrency: 1
    queue: {max_per_client: 2}
"""


async def first(ws: WsClient, id: Any, kind: str) -> dict[str, Any]:
    return await ws.wait_for(lambda m: m.get("id") == id and m["type"] == kind)


def kinds(ws: WsClient, id: Any) -> list[str]:
    return [m["type"] for m in ws.of(id)]


async def test_full_queue_rejects_at_once_and_admitted_requests_all_complete(tmp_path):
    """With queue.max_size requests waiting, the next submit gets queue_full at once (while the queue
    is still stuck) and no queued message; every admitted request still completes."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        with GATE.shut():
            await ws.submit("run", "bounded", "run")
            await first(ws, "run", "started")
            for i in range(3):
                await ws.submit(i, "bounded", i)
                assert (await first(ws, i, "queued"))["rank"] == i
            await ws.submit("over", "bounded", "over")
            rejected = await ws.terminal("over")
            assert rejected["error"]["code"] == "queue_full"
            assert "queue.max_size=3" in rejected["error"]["message"]
            assert ws.terminals() == [rejected], "rejected while nothing admitted had finished"
            GATE.open()
            results = [await ws.terminal(id) for id in ("run", 0, 1, 2)]
        assert [r["data"] for r in results] == ["run", 0, 1, 2]
        assert all(r["type"] == "completed" for r in results)
        assert kinds(ws, "over") == ["error"]
        assert "over" not in GATE.calls


async def test_cancelled_waiting_request_frees_its_place_in_a_full_queue(tmp_path):
    """max_size counts waiting requests: when a full queue loses one (cancelled), a new one is admitted."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        with GATE.shut():
            for id in ("a", "b", "c", "d"):
                await ws.submit(id, "bounded", id)
            await first(ws, "d", "queued")
            await ws.submit("x", "bounded", "x")
            assert (await ws.terminal("x"))["error"]["code"] == "queue_full"
            await ws.send({"type": "cancel", "id": "b"})
            assert (await ws.terminal("b"))["error"]["code"] == "cancelled"
            await ws.submit("e", "bounded", "e")
            assert (await first(ws, "e", "queued"))["rank"] == 2
            GATE.open()
            for id in ("a", "c", "d", "e"):
                assert (await ws.terminal(id))["data"] == id


async def test_client_over_max_per_client_is_refused_while_another_client_is_not(tmp_path):
    """A client (identified by its token) holding queue.max_per_client waiting requests gets
    client_limit for the next; another client, from the same address with another token, is admitted,
    and every admitted request completes."""
    (tmp_path / "tokens.txt").write_text("token-a\ntoken-b\n")
    async with serve(tmp_path, PER_CLIENT) as d:
        a = await d.ws("/v1/ws", headers={"Authorization": "Bearer token-a"})
        b = await d.ws("/v1/ws?token=token-b")
        with GATE.shut():
            await a.submit("a-run", "shared", "a-run")
            await first(a, "a-run", "started")
            for id in ("a1", "a2"):
                await a.submit(id, "shared", id)
                await first(a, id, "queued")
            await a.submit("a3", "shared", "a3")
            refused = await a.terminal("a3")
            assert refused["error"]["code"] == "client_limit"
            assert "max_per_client=2" in refused["error"]["message"]
            for id in ("b1", "b2"):
                await b.submit(id, "shared", id)
                await first(b, id, "queued")
            GATE.open()
            for ws, ids in ((a, ("a-run", "a1", "a2")), (b, ("b1", "b2"))):
                for id in ids:
                    assert (await ws.terminal(id))["data"] == id
        assert kinds(a, "a3") == ["error"]
        assert b.terminals() == [m for m in b.messages if m["type"] == "completed"]


async def test_timeout_covers_waiting_and_running_and_the_endpoint_keeps_serving(tmp_path):
    """queue.timeout_s ends a running request and one still waiting behind it with timeout, saying
    which; neither gets a result later, and the endpoint serves the next request normally."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        with GATE.shut():
            await ws.submit("running", "expiring", "running")
            await first(ws, "running", "started")
            await ws.submit("waiting", "expiring", "waiting")
            await first(ws, "waiting", "queued")
            running, waiting = await ws.terminal("running"), await ws.terminal("waiting")
            assert running["error"]["code"] == "timeout"
            assert "while running" in running["error"]["message"]
            assert waiting["error"]["code"] == "timeout"
            assert "waiting in the queue" in waiting["error"]["message"]
            GATE.open()
            await ws.submit("next", "expiring", "next")
            assert (await ws.terminal("next"))["data"] == "next"
        assert kinds(ws, "running") == ["queued", "started", "error"]
        assert kinds(ws, "waiting") == ["queued", "error"]
        assert "waiting" not in GATE.calls


async def test_concurrency_caps_calls_running_at_once(tmp_path):
    """With concurrency: 3, never more than 3 requests run at once (started, not yet ended), and
    3 do run together when enough are queued; /v1/endpoints never shows more than 3 workers."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        ids = list(range(12))
        for id in ids:
            await ws.submit(id, "parallel", {"s": 0.15})
        workers_seen = []

        async def watch_workers() -> None:
            while True:
                stats = (await d.http("GET", "/v1/endpoints/parallel")).json()["stats"]
                workers_seen.append(stats["workers"])
                await asyncio.sleep(0.02)

        watcher = asyncio.ensure_future(watch_workers())
        try:
            for id in ids:
                assert (await ws.terminal(id))["type"] == "completed"
        finally:
            watcher.cancel()
        running: set[Any] = set()
        most = 0
        for message in ws.messages:
            if message["type"] == "started":
                running.add(message["id"])
            elif message["type"] in ("completed", "error"):
                running.discard(message["id"])
            most = max(most, len(running))
        assert most == 3
        assert workers_seen and max(workers_seen) <= 3
        snapshot = (await d.http("GET", "/v1/endpoints/parallel")).json()
        assert snapshot["stats"]["workers_max"] == 3
