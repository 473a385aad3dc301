"""servd on a Ray cluster (#17): replicas are actors placed by Ray, servd's queue stays in front.

Every test here runs the real daemon in this process as a Ray driver against one shared
`ray.cluster_utils.Cluster` (tests/conftest.py: a head and two worker nodes, node_a and node_b,
each with one `slot`), talks to it over websockets and counts each request's terminal messages.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from typing import Any

import pytest

from tests import procs
from tests.conftest import add_ray_node
from tests.harness import Running, WsClient, eventually, eventually_sync, serve, write_config

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]


def config(cluster: Any, endpoints: str) -> str:
    return f"""
version: 1
cluster: {{engine: ray, address: "{cluster.address}"}}
endpoints:
{endpoints}
"""


SPREAD = """
  where:
    entrypoint: examples.cluster:where_batch
    batch: {max_size: 8, max_delay_ms: 2}
    concurrency: 2
    replicas: 2
    resources: {num_cpus: 0.1, slot: 1}
"""


async def load(ws: WsClient, endpoint: str, inputs: list[Any], first_id: int = 0) -> list[dict[str, Any]]:
    """Submit every input (ids first_id..), then wait for each terminal; fails on a second one."""
    ids = list(range(first_id, first_id + len(inputs)))
    for id, data in zip(ids, inputs, strict=True):
        await ws.submit(id, endpoint, data, progress=False)
    terminals = [await ws.terminal(id, timeout=60) for id in ids]
    exactly_once(ws, ids)
    return terminals


def exactly_once(ws: WsClient, ids: list[int]) -> None:
    counts = Counter(m["id"] for m in ws.terminals())
    assert [counts[id] for id in ids] == [1] * len(ids), {id: counts[id] for id in ids if counts[id] != 1}


async def replicas(d: Running, name: str) -> dict[str, Any]:
    endpoints = (await d.http("GET", "/v1/endpoints")).json()["endpoints"]
    return next(e["replicas"] for e in endpoints if e["name"] == name)  # type: ignore[no-any-return]


async def test_replicas_spread_across_nodes_and_every_request_is_answered_once(tmp_path, ray_cluster):
    """Two replicas asking for a `slot` land one per worker node; 200 requests from 4 clients
    each end in exactly one `completed`, served by both nodes."""
    async with serve(tmp_path, config(ray_cluster, SPREAD)) as d:
        shown = await replicas(d, "where")
        assert (shown["wanted"], shown["live"], shown["pending"]) == (2, 2, 0)
        assert {r["node"] for r in shown["each"]} == {ray_cluster.node_a.node_id, ray_cluster.node_b.node_id}
        clients = [await d.ws() for _ in range(4)]
        results = await asyncio.gather(*(load(ws, "where", [{"s": 0.01}] * 50) for ws in clients))
        terminals = [t for result in results for t in result]
        assert [t["type"] for t in terminals] == ["completed"] * 200
        assert {t["data"]["node"] for t in terminals} == {ray_cluster.node_a.node_id, ray_cluster.node_b.node_id}
        assert max(t["data"]["batch"] for t in terminals) > 1  # servd's batching, across replicas
        ready = await d.http("GET", "/readyz")
        assert ready.status == 200
        metrics = (await d.http("GET", "/metrics")).body.decode()
        assert 'servd_replicas{endpoint="where",state="live"} 2.0' in metrics


STREAM_ON_B = """
  words:
    entrypoint: examples.stream:words
    resources: {num_cpus: 0.1, node_b: 0.5}
"""


async def test_a_worker_node_removed_under_load_loses_nothing(tmp_path, ray_cluster):
    """node_b disappears while batches run on it: they go back to the head of the queue and run on
    node_a; every request still completes exactly once, and the replica shows as pending. A
    stream that had already sent partials from node_b ends `unavailable` instead of running twice."""
    async with serve(tmp_path, config(ray_cluster, SPREAD + STREAM_ON_B)) as d:
        ws = await d.ws()
        await ws.submit("stream", "words", {"text": " ".join(["w"] * 100), "delay_s": 0.1})
        await ws.wait_for(lambda m: m.get("id") == "stream" and m["type"] == "partial", timeout=60)
        inputs = [{"s": 0.25}] * 160
        running = asyncio.ensure_future(load(ws, "where", inputs))
        await eventually(lambda: d.daemon.endpoints["where"].calls_running() >= 2, "calls running on both replicas")
        ray_cluster.remove_node(ray_cluster.node_b, allow_graceful=False)
        try:
            terminals = await running
            assert [t["type"] for t in terminals] == ["completed"] * 160
            events = [e for e in d.log_events() if e["event"] != "request"]
            assert any(e["event"] == "batch requeued" for e in events), events
            late = [t["data"]["node"] for t in terminals[-10:]]
            assert set(late) == {ray_cluster.node_a.node_id}
            shown = await replicas(d, "where")
            assert (shown["live"], shown["pending"]) == (1, 1)
            stream = await ws.terminal("stream", timeout=60)
            assert stream["error"]["code"] == "unavailable"
            assert "after sending partials" in stream["error"]["message"]
            assert Counter(m["id"] for m in ws.terminals())["stream"] == 1
        finally:
            ray_cluster.node_b = add_ray_node(ray_cluster, "node_b")
        await eventually(lambda: replicas(d, "where"), "the replica restarted on the new node_b",
                         until=lambda r: r["live"] == 2, timeout=60)  # fmt: skip


ANYWHERE = """
  work:
    entrypoint: examples.cluster:where_batch
    batch: {max_size: 4, max_delay_ms: 2}
    replicas: REPLICAS
    resources: {num_cpus: 0.1}
"""


async def test_reloading_replicas_1_to_3_to_1_under_load_loses_nothing(tmp_path, ray_cluster):
    """Editing `replicas` adds actors beside the running one, then drains two: requests sent all
    along each end exactly once, and the replica that served from the start is kept throughout."""
    async with serve(tmp_path, config(ray_cluster, ANYWHERE.replace("REPLICAS", "1"))) as d:
        ws = await d.ws()
        first = (await load(ws, "work", [0]))[0]["data"]["pid"]
        sent = 0
        for replicas_now in (3, 1):
            generation = d.daemon.generation
            running = asyncio.ensure_future(load(ws, "work", [{"s": 0.05}] * 80, first_id=1 + sent))
            sent += 80
            write_config(tmp_path, config(ray_cluster, ANYWHERE.replace("REPLICAS", str(replicas_now))))
            d.daemon.request_reload()
            await eventually(lambda g=generation: d.daemon.generation > g, "the reload to apply", timeout=60)
            assert d.daemon.last_reload["result"] == "applied", d.daemon.last_reload
            terminals = await running
            assert [t["type"] for t in terminals] == ["completed"] * 80
            shown = await eventually(
                lambda: replicas(d, "work"),
                f"{replicas_now} live replicas",
                until=lambda r, n=replicas_now: r["live"] == n and len(r["each"]) == n,
            )
        after = await load(ws, "work", [{"s": 0}] * 8, first_id=1 + sent)
        assert {t["data"]["pid"] for t in after} == {first}
        assert shown["wanted"] == 1


CRASHES = """
  work:
    entrypoint: examples.cluster:where_batch
    batch: {max_size: 4, max_delay_ms: 2}
    resources: {num_cpus: 0.1}
"""


async def test_a_replica_that_crashes_in_its_constructor_is_reported_not_retried(tmp_path, ray_cluster):
    """A reload to a model whose constructor raises fails, naming the error; the old replica keeps
    serving, and the crashed actor is dead, not restarting (Ray doesn't restart a failed creation)."""
    async with serve(tmp_path, config(ray_cluster, CRASHES), expect_errors=True) as d:
        ws = await d.ws()
        await load(ws, "work", [1])
        broken = CRASHES.replace("examples.cluster:where_batch", "examples.cluster:CrashesInConstructor").replace(
            "    batch: {max_size: 4, max_delay_ms: 2}\n", ""
        )
        write_config(tmp_path, config(ray_cluster, broken))
        d.daemon.request_reload()
        await eventually(lambda: d.daemon.last_reload, "the reload to end")
        record = d.daemon.last_reload
        assert record["result"] == "failed"
        assert "weights file missing (on purpose)" in record["error"]
        assert "failed to start" in record["error"]
        terminals = await load(ws, "work", [2, 3], first_id=1)
        assert [t["type"] for t in terminals] == ["completed"] * 2
        shown = await replicas(d, "work")
        assert (shown["live"], shown["pending"], shown["dead"]) == (1, 0, 0)


STREAMS = """
  words:
    entrypoint: examples.stream:words
    resources: {num_cpus: 0.1}
"""


async def test_streaming_partials_come_through_ray_in_order(tmp_path, ray_cluster):
    """A generator entrypoint on a replica streams each yielded value as a partial, in order,
    then one completed (a Ray streaming generator underneath)."""
    async with serve(tmp_path, config(ray_cluster, STREAMS)) as d:
        ws = await d.ws()
        await ws.submit(1, "words", {"text": "one two three four", "delay_s": 0.02})
        done = await ws.terminal(1, timeout=60)
        assert done["type"] == "completed" and done["data"] == "one two three four"
        partials = [m["data"] for m in ws.of(1) if m["type"] == "partial"]
        assert partials == ["one", "one two", "one two three", "one two three four"]
        exactly_once(ws, [1])


async def test_cancelling_a_running_stream_cancels_its_call_on_ray(tmp_path, ray_cluster):
    """Cancel after the first partial of a 40-word stream (4 s): the client gets one `cancelled`,
    and the replica's only slot is free long before the stream would have ended (ray.cancel
    reached the call, which stops at its next word)."""
    async with serve(tmp_path, config(ray_cluster, STREAMS)) as d:
        ws = await d.ws()
        await ws.submit(1, "words", {"text": " ".join(["w"] * 40), "delay_s": 0.1})
        await ws.wait_for(lambda m: m.get("id") == 1 and m["type"] == "partial", timeout=60)
        cancelled_at = asyncio.get_running_loop().time()
        await ws.send({"type": "cancel", "id": 1})
        assert (await ws.terminal(1))["error"]["code"] == "cancelled"
        await ws.submit(2, "words", {"text": "next", "delay_s": 0})
        assert (await ws.terminal(2, timeout=60))["type"] == "completed"
        assert asyncio.get_running_loop().time() - cancelled_at < 2.0
        exactly_once(ws, [1, 2])


FAILS = """
  odd:
    entrypoint: examples.faults:fail_on_odd_batch
    batch: {max_size: 16, max_delay_ms: 200, wait: always}
    resources: {num_cpus: 0.1}
  oom:
    entrypoint: examples.faults:oom_above_4
    batch: {max_size: 16, max_delay_ms: 200, wait: always}
    resources: {num_cpus: 0.1}
"""


async def test_bisection_and_out_of_memory_halving_happen_on_the_replica(tmp_path, ray_cluster):
    """A batch with one bad input fails that input alone; a batch that runs out of memory is
    halved until it fits and lowers the endpoint's working batch size, as on one machine."""
    async with serve(tmp_path, config(ray_cluster, FAILS), expect_errors=True) as d:
        ws = await d.ws()
        odd = await load(ws, "odd", [0, 2, 4, 5, 6, 8, 10, 12])
        assert [t["type"] for t in odd] == ["completed"] * 3 + ["error"] + ["completed"] * 4
        assert "odd input 5" in odd[3]["error"]["message"]
        oom = await load(ws, "oom", list(range(16)), first_id=100)
        assert [t["type"] for t in oom] == ["completed"] * 16
        assert max(t["data"]["batch"] for t in oom) <= 4
        (endpoint,) = [e for e in (await d.http("GET", "/v1/endpoints")).json()["endpoints"] if e["name"] == "oom"]
        assert endpoint["stats"]["batch_size"] <= 4


NOWHERE = """
  nowhere:
    entrypoint: examples.cluster:where
    resources: {num_cpus: 0.1, gpu_that_no_node_has: 1}
    queue: {timeout_s: 1}
"""


async def test_a_replica_no_node_can_hold_is_warned_of_and_requests_wait_until_their_timeout(tmp_path, ray_cluster):
    """Resources no node has: a warning names them, the replica stays pending, /readyz says 503,
    and a request waits in the queue (with a rank) until queue.timeout_s ends it."""
    async with serve(tmp_path, config(ray_cluster, NOWHERE)) as d:
        warnings = [e for e in d.log_events() if e["event"] == "resources unsatisfiable"]
        assert "gpu_that_no_node_has=1" in warnings[0]["detail"]
        shown = await replicas(d, "nowhere")
        assert (shown["wanted"], shown["live"], shown["pending"]) == (1, 0, 1)
        assert (await d.http("GET", "/readyz")).status == 503
        ws = await d.ws()
        await ws.submit(1, "nowhere", 1)
        assert (await ws.wait_for(lambda m: m.get("id") == 1))["type"] == "queued"
        assert (await ws.terminal(1))["error"]["code"] == "timeout"
        exactly_once(ws, [1])


def cluster_in_use(cluster: Any) -> dict[str, float]:
    """CPU and slots held on the cluster now (by any actor), seen from a short-lived driver."""
    import ray

    ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
    try:
        total, free = ray.cluster_resources(), ray.available_resources()
        return {k: round(total[k] - free.get(k, 0.0), 3) for k in ("CPU", "slot")}
    finally:
        ray.shutdown()


async def test_stopping_the_daemon_closes_every_replica_and_leaves_nothing_running(tmp_path, ray_cluster):
    """At shutdown each replica's close() runs in its actor, then the actors end: the cluster's
    CPUs and slots are all free again."""
    closes = CLOSES.replace("DIR", str(tmp_path))
    async with serve(tmp_path, config(ray_cluster, closes)) as d:
        pids = {t["data"]["pid"] for t in await load(await d.ws(), "closes", list(range(20)))}
        assert len(pids) == 2
    assert {p.name for p in tmp_path.glob("closed-*")} == {f"closed-{pid}" for pid in pids}
    await eventually(
        lambda: cluster_in_use(ray_cluster), "the cluster to be free", until=lambda u: u == {"CPU": 0, "slot": 0}
    )


CLOSES = """
  closes:
    entrypoint: examples.cluster:Closes
    options: {directory: "DIR"}
    replicas: 2
    resources: {num_cpus: 0.1, slot: 1}
"""


def test_sigkill_of_servd_leaves_nothing_running_on_the_cluster(tmp_path, ray_cluster):
    """`servd run` is a Ray driver owning its (non-detached) actors: SIGKILL it, and Ray ends its
    replicas; the cluster's CPUs and slots are all free again."""
    with procs.running(tmp_path, config(ray_cluster, CLOSES.replace("DIR", str(tmp_path)))) as daemon:
        assert procs.http(daemon.port, "POST", "/v1/endpoints/closes", {"data": 1}).status == 200
        assert cluster_in_use(ray_cluster)["slot"] == 2
        os.kill(daemon.proc.pid, signal.SIGKILL)
        daemon.proc.wait(30)
    eventually_sync(
        lambda: cluster_in_use(ray_cluster), "the cluster to be free", until=lambda u: u == {"CPU": 0, "slot": 0}
    )
