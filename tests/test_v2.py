"""The Open Inference Protocol (KServe v2) over HTTP, tested with the official client (issue 18).

tritonclient.http (sync, run on a worker thread) and tritonclient.http.aio talk to a real
in-process daemon: metadata and readiness, infer with JSON and binary data for each datatype,
several rows per request, requested outputs, errors; then requests under load through a batched
endpoint, each answer checked against the model called directly. Malformed binary bodies are
sent raw, as no client would build them.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from examples.mlp import MLPTensors
from tests.harness import Running, eventually, serve
from tests.test_ws import Gate

HOLD = Gate()  # tests.test_v2:HOLD: a tensor entrypoint the test holds shut
T = TypeVar("T")

TYPES = ("FP32", "FP16", "INT64", "BOOL", "BYTES")
TYPES_YAML = ", ".join(f"{{name: {t.lower()}, datatype: {t}, shape: [-1, 2]}}" for t in TYPES)

CONFIG = f"""
version: 1
server:
  max_message_bytes: 65536
endpoints:
  simple:
    entrypoint: examples.tensors:add_sub
    batch: {{max_size: 8, max_delay_ms: 2}}
    tensors:
      inputs:
        - {{name: INPUT0, datatype: INT32, shape: [-1, 16]}}
        - {{name: INPUT1, datatype: INT32, shape: [-1, 16]}}
      outputs:
        - {{name: OUTPUT0, datatype: INT32, shape: [-1, 16]}}
        - {{name: OUTPUT1, datatype: INT32, shape: [-1, 16]}}
  types:
    entrypoint: examples.tensors:identity
    batch: {{max_size: 16, max_delay_ms: 2}}
    tensors:
      inputs: [{TYPES_YAML}]
      outputs: [{TYPES_YAML}, {{name: rows, datatype: INT64, shape: [-1]}}]
  mlp:
    entrypoint: examples.mlp:MLPTensors
    device: cpu
    batch: {{max_size: 32, max_delay_ms: 5}}
    tensors:
      inputs: [{{name: x, datatype: FP32, shape: [-1, 256]}}]
      outputs: [{{name: y, datatype: FP32, shape: [-1, 16]}}]
  held:
    entrypoint: tests.test_v2:HOLD
    queue: {{max_size: 1, priority_levels: 2}}
    tensors:
      inputs: [{{name: x, datatype: FP32, shape: [2]}}]
      outputs: [{{name: x, datatype: FP32, shape: [2]}}]
  echo:
    entrypoint: examples.echo:echo
"""


async def sync(d: Running, call: Callable[[httpclient.InferenceServerClient], T]) -> T:
    """Run `call` with a sync client on a worker thread (it blocks), the daemon's loop running here."""

    def run() -> T:
        client = httpclient.InferenceServerClient(url=f"127.0.0.1:{d.port}")
        try:
            return call(client)
        finally:
            client.close()

    return await asyncio.to_thread(run)


def inputs_for(arrays: dict[str, np.ndarray], binary: bool = True) -> list[httpclient.InferInput]:
    made = []
    for name, array in arrays.items():
        tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array, binary_data=binary)
        made.append(tensor)
    return made


def simple_inputs(rows: int) -> dict[str, np.ndarray]:
    a = np.arange(16 * rows, dtype=np.int32).reshape(rows, 16)
    return {"INPUT0": a, "INPUT1": np.ones_like(a)}


def typed_arrays(rows: int) -> dict[str, np.ndarray]:
    base = np.arange(2 * rows).reshape(rows, 2)
    return {
        "fp32": (base / 3).astype(np.float32),
        "fp16": (base / 4).astype(np.float16),
        "int64": (base - 2**40).astype(np.int64),
        "bool": base % 2 == 0,
        "bytes": np.array([f"s{i}-\u00e9".encode() for i in base.ravel()], dtype=np.object_).reshape(rows, 2),
    }


# -- metadata and readiness ----------------------------------------------------------------------


async def test_server_and_model_metadata_and_readiness_through_the_official_client(tmp_path):
    """tritonclient.http finds servd live and ready, named servd with the binary_tensor_data extension; each
    endpoint is a model of version 1 whose metadata and config show its declared tensors and batching
    (max_batch_size, the queue delay), and an endpoint without tensors takes one BYTES input, data."""
    async with serve(tmp_path, CONFIG) as d:

        def ask(client: httpclient.InferenceServerClient) -> dict[str, Any]:
            return {
                "live": client.is_server_live(),
                "ready": client.is_server_ready(),
                "server": client.get_server_metadata(),
                "model_ready": client.is_model_ready("simple"),
                "versioned_ready": client.is_model_ready("simple", "1"),
                "metadata": client.get_model_metadata("simple"),
                "versioned": client.get_model_metadata("simple", "1"),
                "config": client.get_model_config("simple"),
                "echo": client.get_model_metadata("echo"),
            }

        got = await sync(d, ask)
    assert got["live"] and got["ready"] and got["model_ready"] and got["versioned_ready"]
    assert got["server"]["name"] == "servd" and "binary_tensor_data" in got["server"]["extensions"]
    assert got["metadata"] == got["versioned"]
    assert got["metadata"]["versions"] == ["1"]
    assert got["metadata"]["inputs"] == [
        {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]},
        {"name": "INPUT1", "datatype": "INT32", "shape": [-1, 16]},
    ]
    config = got["config"]
    assert config["max_batch_size"] == 8 and config["input"][0] == {
        "name": "INPUT0",
        "data_type": "TYPE_INT32",
        "dims": [16],
    }
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    assert got["echo"]["inputs"] == [{"name": "data", "datatype": "BYTES", "shape": [1]}]


async def test_unknown_models_and_versions_are_404_in_the_protocols_error_shape(tmp_path):
    """A model or version that isn't served (metadata, readiness, infer) is a 404 the client raises with a
    message naming it, in the v2 error shape {"error": "..."}."""
    async with serve(tmp_path, CONFIG) as d:

        def ask(client: httpclient.InferenceServerClient) -> list[InferenceServerException]:
            errors = []
            for call in (
                lambda: client.get_model_metadata("nope"),
                lambda: client.get_model_metadata("simple", "2"),
                lambda: client.infer("nope", inputs_for(simple_inputs(1))),
            ):
                with pytest.raises(InferenceServerException) as caught:
                    call()
                errors.append(caught.value)
            assert not client.is_model_ready("nope")
            return errors

        errors = await sync(d, ask)
        raw = await d.http("GET", "/v2/models/nope")
    assert [e.status() for e in errors] == ["404", "404", "404"]
    assert "no model 'nope'" in errors[0].message() and "no version '2'" in errors[1].message()
    assert raw.json() == {"error": "no model 'nope'; servd's endpoints are its models"}


# -- inference -------------------------------------------------------------------------------


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
async def test_every_datatype_round_trips_with_several_rows_per_request(tmp_path, binary_in, binary_out):
    """FP32, FP16, INT64, BOOL and BYTES tensors of three rows come back as sent, in binary or JSON each way
    (BYTES as text in JSON), and only the outputs asked for are returned."""
    arrays = typed_arrays(3)
    async with serve(tmp_path, CONFIG) as d:

        def infer(client: httpclient.InferenceServerClient) -> httpclient.InferResult:
            outputs = [httpclient.InferRequestedOutput(t.lower(), binary_data=binary_out) for t in TYPES]
            return client.infer("types", inputs_for(arrays, binary_in), outputs=outputs)

        result = await sync(d, infer)
    for name, sent in arrays.items():
        got = result.as_numpy(name)
        assert got.shape == sent.shape, name
        if name == "bytes" and not binary_out:  # JSON carries BYTES as text
            assert [v.decode() if isinstance(v, bytes) else v for v in got.ravel()] == [
                v.decode() for v in sent.ravel()
            ]
        else:
            assert got.dtype == sent.dtype and np.array_equal(got, sent), name
    assert result.as_numpy("rows") is None, "only the outputs asked for come back"


async def test_simple_with_request_id_parameters_and_all_outputs_binary_by_default(tmp_path):
    """Triton's simple model answers with the sums and differences, echoing the request's id and parameters, and
    with every output in binary when none is asked for otherwise."""
    async with serve(tmp_path, CONFIG) as d:

        def infer(client: httpclient.InferenceServerClient) -> httpclient.InferResult:
            return client.infer("simple", inputs_for(simple_inputs(4)), request_id="r-17", parameters={"tag": "mine"})

        result = await sync(d, infer)
    sent = simple_inputs(4)
    assert np.array_equal(result.as_numpy("OUTPUT0"), sent["INPUT0"] + 1)
    assert np.array_equal(result.as_numpy("OUTPUT1"), sent["INPUT0"] - 1)
    response = result.get_response()
    assert response["id"] == "r-17" and response["model_name"] == "simple" and response["model_version"] == "1"
    assert response["parameters"] == {"tag": "mine"}
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])


async def test_bad_shape_and_datatype_are_400_naming_the_tensor(tmp_path):
    """A wrong shape, a wrong datatype, more rows than batch.max_size and an unknown requested output are each a
    400 whose message names the tensor and what was declared; the server serves on."""
    async with serve(tmp_path, CONFIG) as d:

        def infer(client: httpclient.InferenceServerClient) -> list[InferenceServerException]:
            errors = []
            bad = [
                {"INPUT0": np.zeros((1, 15), np.int32), "INPUT1": np.zeros((1, 15), np.int32)},
                {"INPUT0": np.zeros((1, 16), np.float32), "INPUT1": np.zeros((1, 16), np.int32)},
                {"INPUT0": np.zeros((9, 16), np.int32), "INPUT1": np.zeros((9, 16), np.int32)},
            ]
            for arrays in bad:
                with pytest.raises(InferenceServerException) as caught:
                    client.infer("simple", inputs_for(arrays))
                errors.append(caught.value)
            with pytest.raises(InferenceServerException) as caught:
                client.infer("simple", inputs_for(simple_inputs(1)), outputs=[httpclient.InferRequestedOutput("NOPE")])
            errors.append(caught.value)
            return errors

        errors = await sync(d, infer)
        after = await sync(d, lambda c: c.infer("simple", inputs_for(simple_inputs(1))).as_numpy("OUTPUT0"))
    assert [e.status() for e in errors] == ["400"] * 4
    messages = [e.message() for e in errors]
    assert "input 'INPUT0': shape [1, 15] does not match the declared [-1, 16]" in messages[0]
    assert messages[1] == "input 'INPUT0': datatype FP32, declared INT32"
    assert messages[2] == "9 rows; batch.max_size=8 rows is the most one call takes"
    assert "unknown output 'NOPE'" in messages[3]
    assert after.shape == (1, 16), "the daemon serves on"


async def test_an_endpoint_without_tensors_takes_and_returns_json_as_bytes(tmp_path):
    """A JSON endpoint is a v2 model too: the client sends JSON text in the BYTES input data and gets the result
    back the same way; any other input is a 400 that says to send data."""
    async with serve(tmp_path, CONFIG) as d:

        def infer(client: httpclient.InferenceServerClient) -> np.ndarray:
            data = httpclient.InferInput("data", [1], "BYTES")
            data.set_data_from_numpy(np.array([json.dumps({"hello": [1, 2]}).encode()], dtype=np.object_))
            return client.infer("echo", [data]).as_numpy("data")

        got = await sync(d, infer)
        wrong = await d.http(
            "POST", "/v2/models/echo/infer", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}
        )
    assert json.loads(got[0]) == {"hello": [1, 2]}
    assert wrong.status == 400 and "send one BYTES input 'data'" in wrong.json()["error"]


async def test_the_asyncio_client_infers_and_reads_statistics(tmp_path):
    """tritonclient.http.aio runs five inferences at once, each with the right answer, and the model's statistics
    count five inferences, their executions and compute time."""
    async with serve(tmp_path, CONFIG) as d:
        client = aioclient.InferenceServerClient(url=f"127.0.0.1:{d.port}")
        try:
            assert await client.is_server_ready()
            sent = simple_inputs(2)
            inputs = []
            for name, array in sent.items():
                tensor = aioclient.InferInput(name, list(array.shape), "INT32")
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            results = await asyncio.gather(*(client.infer("simple", inputs) for _ in range(5)))
            stats = await client.get_inference_statistics("simple")
        finally:
            await client.close()
    assert all(np.array_equal(r.as_numpy("OUTPUT0"), sent["INPUT0"] + 1) for r in results)
    model = stats["model_stats"][0]
    assert model["name"] == "simple" and model["inference_count"] == 5
    assert 1 <= model["execution_count"] <= 5
    assert model["inference_stats"]["success"]["count"] == 5 and model["inference_stats"]["compute_infer"]["ns"] > 0


# -- queue, priorities and deadlines -------------------------------------------------------------


def held_body(**parameters: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}]}
    if parameters:
        body["parameters"] = parameters
    return body


async def test_queue_full_is_503_with_retry_after_and_timeout_and_priority_map_onto_servds(tmp_path):
    """servd's queue speaks v2: a full queue is a 503 with Retry-After, a priority beyond queue.priority_levels a
    400, and the v2 timeout parameter (microseconds) is servd's deadline, a 504 when it passes."""
    async with serve(tmp_path, CONFIG) as d:
        with HOLD.shut():
            running = asyncio.ensure_future(d.http("POST", "/v2/models/held/infer", held_body()))
            await eventually(lambda: HOLD.calls, "the first request to run")
            waiting = asyncio.ensure_future(d.http("POST", "/v2/models/held/infer", held_body(priority=2)))
            await eventually(lambda: len(d.daemon.endpoints["held"].queue), "the second request to wait")
            full = await d.http("POST", "/v2/models/held/infer", held_body())
            too_high = await d.http("POST", "/v2/models/held/infer", held_body(priority=3))
            waiting.cancel()
        await running
    assert full.status == 503 and int(full.headers["Retry-After"]) >= 1
    assert "queue.max_size=1" in full.json()["error"]
    assert too_high.status == 400 and "priority 3" in too_high.json()["error"]
    async with serve(tmp_path, CONFIG) as d:
        with HOLD.shut():
            timed = await d.http("POST", "/v2/models/held/infer", held_body(timeout=50_000))
    assert timed.status == 504 and timed.json() == {"error": "deadline_s=0.05 passed while running"}


# -- malformed binary bodies ---------------------------------------------------------------------


def binary_body(header: dict[str, Any], data: bytes) -> tuple[bytes, int]:
    text = json.dumps(header).encode()
    return text + data, len(text)


TWO_ROWS = np.arange(32, dtype="<i4").tobytes()  # two rows of INPUT0


def simple_binary(size0: int = 64, size1: int = 64, rows: int = 1) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [rows, 16], "parameters": {"binary_data_size": size0}},
            {"name": "INPUT1", "datatype": "INT32", "shape": [rows, 16], "parameters": {"binary_data_size": size1}},
        ]
    }


JSON_SIMPLE = {
    "inputs": [{"name": n, "datatype": "INT32", "shape": [1, 16], "data": [1] * 16} for n in ("INPUT0", "INPUT1")]
}


@pytest.mark.parametrize(
    ("header", "data", "length", "words"),
    [
        (simple_binary(), TWO_ROWS[:100], None, "past the end of the body"),
        (simple_binary(), TWO_ROWS, 10**6, "Inference-Header-Content-Length is 1000000, past the end of the body"),
        (simple_binary(), TWO_ROWS, "12ab", "must be a number of bytes"),
        (simple_binary(60, 68), TWO_ROWS, None, "60 bytes of binary data, but INT32 of shape [1, 16] is 64 bytes"),
        (simple_binary(), TWO_ROWS + TWO_ROWS[:32], None, "32 bytes of binary data after the inputs"),
        (simple_binary(rows=10**9), TWO_ROWS, None, "is 64000000000 bytes"),
        ({"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [10**12], "data": [1]}]}, b"", None, "holds"),
        ({"inputs": [{"name": "INPUT0", "datatype": "INT33", "shape": [1], "data": [1]}]}, b"", None, "INT33"),
        ({"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [-1], "data": [1]}]}, b"", None, "shape must"),
    ],
)
async def test_malformed_binary_bodies_get_a_clear_400_and_harm_nothing(tmp_path, header, data, length, words):
    """Binary bodies no client would build (cut short, a wrong or non-numeric header length, sizes that disagree
    with the shape, bytes left over, absurd shapes, unknown datatypes) get a 400 saying what is wrong, and the
    next request is answered."""
    async with serve(tmp_path, CONFIG) as d:
        body, json_length = binary_body(header, data)
        headers = {"Inference-Header-Content-Length": str(json_length if length is None else length)}
        bad = await d.http("POST", "/v2/models/simple/infer", raw=body, headers=headers)
        good = await d.http("POST", "/v2/models/simple/infer", JSON_SIMPLE)
    assert bad.status == 400, bad.body
    assert words in bad.json()["error"], bad.json()
    assert good.status == 200 and good.json()["outputs"][0]["data"] == [2] * 16


async def test_a_body_over_max_message_bytes_is_413(tmp_path):
    """A body larger than server.max_message_bytes is a 413 naming the setting."""
    async with serve(tmp_path, CONFIG) as d:
        reply = await d.http("POST", "/v2/models/simple/infer", raw=b"x" * 70000)
    assert reply.status == 413 and "server.max_message_bytes=65536" in reply.json()["error"]


# -- under load ----------------------------------------------------------------------------------


async def test_requests_under_load_are_batched_and_each_answer_matches_the_model_run_directly(tmp_path):
    """120 requests of 1 to 3 rows each, 32 in flight, binary and JSON mixed, through a batched MLP: each answer
    equals the model run directly on that request, and requests shared calls."""
    rng = np.random.default_rng(0)
    requests = [rng.uniform(-1, 1, (int(rng.integers(1, 4)), 256)).astype(np.float32) for _ in range(120)]
    model = MLPTensors("cpu")
    expected = [model({"x": x})["y"].numpy() for x in requests]
    async with serve(tmp_path, CONFIG) as d:
        client = aioclient.InferenceServerClient(url=f"127.0.0.1:{d.port}", conn_limit=32)
        try:

            async def one(x: np.ndarray, binary: bool) -> np.ndarray:
                tensor = aioclient.InferInput("x", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x, binary_data=binary)
                result = await client.infer("mlp", [tensor])
                return result.as_numpy("y")

            got = []
            for start in range(0, len(requests), 32):  # 32 clients in flight at a time, bounded
                chunk = requests[start : start + 32]
                got += await asyncio.gather(*(one(x, i % 3 != 0) for i, x in enumerate(chunk)))
            stats = d.daemon.endpoints["mlp"].stats
        finally:
            await client.close()
    for x, want, answer in zip(requests, expected, got, strict=True):
        assert answer.shape == (len(x), 16)
        np.testing.assert_allclose(answer, want, rtol=1e-4, atol=1e-5)
    assert stats.completed == len(requests)
    assert stats.batches < len(requests), "requests were stacked into shared calls"


# -- the docs' examples -------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def readme_block(page: str, heading: str) -> str:
    """The python block under `heading` of docs/`page`."""
    section = (ROOT / "docs" / page).read_text("utf-8").split(f"\n{heading}\n", 1)[1].split("\n#", 1)[0]
    match = re.search(r"^```python\n(.*?)^```$", section, re.S | re.M)
    assert match, f"docs/{page}'s {heading} has no python block"
    return match.group(1)


def shipped_simple_endpoint() -> str:
    """The `simple` endpoint exactly as the default servd.yaml declares it."""
    text = (ROOT / "servd.yaml").read_text("utf-8")
    block = text.split("\n  simple:\n", 1)[1].split("\n\n", 1)[0]
    return "version: 1\nendpoints:\n  simple:\n" + block + "\n"


async def test_the_readmes_tritonclient_example_runs_against_the_shipped_simple_endpoint(tmp_path, capsys):
    """The docs' tritonclient example runs as written against the simple endpoint of the default servd.yaml and
    prints what the docs say."""
    code = readme_block("protocols/v2.md", "## Using tritonclient")
    async with serve(tmp_path, shipped_simple_endpoint()) as d:
        await asyncio.to_thread(exec, code.replace("127.0.0.1:8700", f"127.0.0.1:{d.port}"), {})
    assert capsys.readouterr().out.split() == ["r1", "1"]


async def test_the_readmes_numpy_client_example_runs(tmp_path, capsys):
    """The docs' binary-frames example (numpy arrays over the websocket) runs as written and prints the shape the
    docs show."""
    code = readme_block("protocols/websocket.md", "## Binary frames")
    async with serve(tmp_path, shipped_simple_endpoint()) as d:
        await asyncio.to_thread(exec, code.replace("ws://127.0.0.1:8700", d.ws_url), {})
    assert capsys.readouterr().out.strip() == "(3, 16)"
