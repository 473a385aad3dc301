"""Devices end to end: one model instance per listed device, per-instance concurrency, `auto`,
and torch's CPU thread budget as the worker threads that run the calls see it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from examples.probes import GatedCounter, RecordsInit
from tests.harness import Running, WsClient, eventually, serve, write_config


@pytest.fixture
def gate() -> Iterator[Any]:
    """GatedCounter's gate, closed for the test and always opened afterwards (so shutdown can drain)."""
    GatedCounter.gate.clear()
    try:
        yield GatedCounter.gate
    finally:
        GatedCounter.gate.set()


async def started(ws: WsClient, count: int) -> None:
    """Wait until `count` requests on this connection have started."""
    await ws.wait_for(lambda m: m["type"] == "started" and sum(x["type"] == "started" for x in ws.messages) >= count)


async def endpoint_snapshot(d: Running, name: str) -> dict[str, Any]:
    endpoints = (await d.http("GET", "/v1/endpoints")).json()["endpoints"]
    return next(e for e in endpoints if e["name"] == name)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


async def test_device_list_loads_one_instance_per_device(tmp_path):
    """device: [cpu, cpu] constructs the class twice, and /v1/endpoints lists both devices."""
    config = """
    version: 1
    endpoints:
      twice:
        entrypoint: examples.probes:RecordsInit
        device: [cpu, cpu]
    """
    RecordsInit.made.clear()
    async with serve(tmp_path, config) as d:
        assert len(RecordsInit.made) == 2
        assert (await endpoint_snapshot(d, "twice"))["devices"] == ["cpu", "cpu"]


async def test_both_instances_of_a_device_list_serve_under_load(tmp_path, gate):
    """With two devices, concurrent requests are spread over both instances (each counts from 1)."""
    config = """
    version: 1
    server: {drain_timeout_s: 2}  # if the test fails with the gate closed, shutdown doesn't wait long
    endpoints:
      counter:
        entrypoint: examples.probes:GatedCounter
        device: [cpu, cpu]
    """
    async with serve(tmp_path, config) as d:
        ws = await d.ws()
        for i in range(4):
            await ws.submit(i, "counter", i)
        await started(ws, 2)  # one call per instance holds its slot
        gate.set()
        terminals = [await ws.terminal(i) for i in range(4)]
        counts = [t["data"]["count"] for t in terminals]
        assert counts.count(1) == 2, counts  # two separate instances each served a first call
        assert sorted(counts) in ([1, 1, 2, 2], [1, 1, 2, 3])


async def test_concurrency_applies_per_instance(tmp_path, gate):
    """concurrency: 2 with two devices runs 4 calls at once; the rest wait in the queue."""
    config = """
    version: 1
    server: {drain_timeout_s: 2}  # if the test fails with the gate closed, shutdown doesn't wait long
    endpoints:
      counter:
        entrypoint: examples.probes:GatedCounter
        device: [cpu, cpu]
        concurrency: 2
    """
    async with serve(tmp_path, config) as d:
        ws = await d.ws()
        for i in range(8):
            await ws.submit(i, "counter", i)
        await ws.wait_for(lambda m: m["type"] == "queued" and m["id"] == 7)
        await started(ws, 4)
        stats = (await endpoint_snapshot(d, "counter"))["stats"]
        assert (stats["running"], stats["queued"], stats["workers_max"]) == (4, 4, 4)
        assert sum(m["type"] == "started" for m in ws.messages) == 4
        gate.set()
        terminals = [await ws.terminal(i) for i in range(8)]
        assert [t["type"] for t in terminals] == ["completed"] * 8


@pytest.mark.skipif(
    torch.cuda.is_available() or torch.backends.mps.is_available(), reason="auto picks the accelerator here"
)
async def test_auto_device_is_cpu_without_an_accelerator(tmp_path):
    """device: auto for a torch entrypoint on a machine without a GPU resolves to cpu."""
    config = """
    version: 1
    endpoints:
      threads:
        entrypoint: examples.probes:torch_num_threads
        device: auto
    """
    async with serve(tmp_path, config) as d:
        assert (await endpoint_snapshot(d, "threads"))["devices"] == ["cpu"]


async def test_configured_torch_threads_reach_the_worker_threads(tmp_path):
    """server.torch_threads: 2 makes torch.get_num_threads() 2 inside calls."""
    torch.set_num_threads(1)
    config = """
    version: 1
    server: {torch_threads: 2}
    endpoints:
      threads:
        entrypoint: examples.probes:torch_num_threads
        device: cpu
    """
    async with serve(tmp_path, config) as d:
        assert (await d.post("threads", None)).json()["data"] == 2


async def test_auto_torch_threads_divides_cores_by_cpu_torch_calls(tmp_path):
    """torch_threads: auto gives each call cores // (concurrency of CPU torch endpoints), at least 1."""
    torch.set_num_threads(cores() + 1)
    config = """
    version: 1
    endpoints:
      threads:
        entrypoint: examples.probes:torch_num_threads
        device: cpu
        concurrency: 2
      echo:  # no torch: its calls don't count
        entrypoint: examples.echo:echo
        concurrency: 3
    """
    async with serve(tmp_path, config) as d:
        assert (await d.post("threads", None)).json()["data"] == max(1, cores() // 2)


async def test_torch_threads_changed_by_reload_reach_threads_that_already_ran_calls(tmp_path):
    """A reload that changes server.torch_threads applies to the pool's existing worker threads too."""
    config = """
    version: 1
    server: {{max_threads: 1, torch_threads: {threads}}}
    endpoints:
      threads:
        entrypoint: examples.probes:torch_num_threads
        device: cpu
    """
    async with serve(tmp_path, config.format(threads=2)) as d:
        assert (await d.post("threads", None)).json()["data"] == 2
        write_config(tmp_path, config.format(threads=1))
        d.daemon.request_reload()
        await wait_generation(d, 2)
        assert (await d.post("threads", None)).json()["data"] == 1


async def wait_generation(d: Running, generation: int) -> None:
    """Wait (bounded) until /v1/status reports `generation` with the last reload applied."""

    async def status() -> dict[str, Any]:
        return dict((await d.http("GET", "/v1/status")).json())

    reached = await eventually(status, f"generation {generation}", until=lambda s: s["generation"] >= generation)
    assert reached["last_reload"]["result"] == "applied", reached["last_reload"]


def test_torch_threads_rule():
    """The rule itself: configured wins; auto = cores // CPU torch calls at once, never below 1."""
    from servd.runners.devices import torch_threads_for

    assert torch_threads_for(3, 5) == 5
    assert torch_threads_for(0, None) == cores()
    assert torch_threads_for(2, None) == max(1, cores() // 2)
    assert torch_threads_for(cores() * 4, None) == 1
