"""On a real GPU: placement, `auto`, the MLP on CUDA against the CPU, and out-of-memory halving.

Skipped where torch sees no CUDA device (CI has none); run on a GPU machine with
`pytest tests/test_gpu.py`. The CPU suite covers the same paths with a simulated OOM.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import torch

from benchmarks.mlp import inputs
from examples.mlp import MLP
from tests.harness import serve
from tests.test_batching import completed_data, submit_all

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


async def endpoints(d: Any) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in (await d.http("GET", "/v1/endpoints")).json()["endpoints"]}


async def test_cuda_and_auto_place_the_model_on_the_gpu(tmp_path):
    """device: cuda and device: auto both run the calls on cuda:0, and /v1/endpoints says so."""
    config = """
    version: 1
    endpoints:
      named:
        entrypoint: examples.gpu:WhereAmI
        device: cuda
      auto:
        entrypoint: examples.gpu:WhereAmI
        device: auto
    """
    async with serve(tmp_path, config) as d:
        listed = await endpoints(d)
        for name in ("named", "auto"):
            assert listed[name]["devices"] == ["cuda:0"]
            assert (await d.post(name, 21)).json()["data"] == {"device": "cuda:0", "value": 42.0}


async def test_mlp_on_gpu_matches_the_model_called_in_process_on_cpu(tmp_path):
    """The batched MLP served on cuda gives, for 200 distinct inputs, what the CPU model gives in-process."""
    config = """
    version: 1
    endpoints:
      mlp:
        entrypoint: examples.mlp:MLP
        device: cuda
        batch: {max_size: 32, max_delay_ms: 5}
    """
    data = [json.loads(text) for text in inputs(200)]
    expected = MLP("cpu")(data)
    async with serve(tmp_path, config) as d:
        terminals = await submit_all(await d.ws(), "mlp", data)
    got = completed_data(terminals)
    assert max(t["timing"]["batch_size"] for t in terminals) > 1
    for row, want in zip(got, expected, strict=True):
        assert row == pytest.approx(want, abs=1e-3)


async def test_a_gpu_and_a_cpu_instance_both_serve(tmp_path):
    """device: [cuda, cpu]: a burst of requests is spread over both instances."""
    config = """
    version: 1
    endpoints:
      where:
        entrypoint: examples.gpu:WhereAmI
        device: [cuda, cpu]
    """
    async with serve(tmp_path, config) as d:
        assert (await endpoints(d))["where"]["devices"] == ["cuda:0", "cpu"]
        got = completed_data(await submit_all(await d.ws(), "where", list(range(200))))
    assert [x["value"] for x in got] == [2.0 * i for i in range(200)]
    assert {x["device"] for x in got} == {"cuda:0", "cpu"}


async def test_real_cuda_out_of_memory_halves_the_batch_and_lowers_the_working_size(tmp_path):
    """16 requests at an entrypoint that needs 1/5 of free GPU memory per input: the batch of 16
    runs out of memory for real, servd retries in halves (releasing the failed call's memory),
    every request completes in batches of at most 4, and the working batch size drops to 4."""
    config = """
    version: 1
    endpoints:
      hungry:
        entrypoint: examples.gpu:MemoryHungry
        device: cuda
        batch: {max_size: 16, max_delay_ms: 3000, wait: always}
    """
    async with serve(tmp_path, config) as d:
        terminals = await submit_all(await d.ws(), "hungry", list(range(16)))
        data = completed_data(terminals)
        assert [x["value"] for x in data] == list(range(16))
        assert max(x["batch"] for x in data) <= 4
        # each result reports the call it came from (of at most 4), not the batch of 16 as formed
        assert [t["timing"]["batch_size"] for t in terminals] == [x["batch"] for x in data]
        stats = (await endpoints(d))["hungry"]["stats"]
        assert stats["batch_size"] == 4
        metrics = (await d.http("GET", "/metrics")).body.decode()
        assert re.search(r'^servd_working_batch_size\{endpoint="hungry"\} 4\.0$', metrics, re.M), metrics
        lowered = [e for e in d.log_events() if e["event"] == "out of memory: batch size lowered"]
        assert [(e["failed_size"], e["batch_size"]) for e in lowered] == [(8, 4)]
        later = completed_data(await submit_all(await d.ws(), "hungry", list(range(8))))
        assert max(x["batch"] for x in later) <= 4
