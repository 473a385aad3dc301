"""Declared tensors (issue 18): checking, stacking, splitting and bisection on row boundaries.

The pure parts (servd/inputs/tensors.py and declared.py, runners/batch_rows.py, batching.fit_rows,
local.execute on a tensor Job) are tested as plain functions, without a loop; the rest through a
real daemon on servd's own JSON API.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from examples.tensors import OomAboveRows, add_sub, fail_on_negative, wrong_rows
from servd.core import batching
from servd.inputs import declared, tensors
from servd.inputs.declared import TensorSpec, TensorsSpec
from servd.runners import batch_rows
from servd.runners.entrypoints import Model
from servd.runners.execution import execute
from servd.runners.seam import BatchContractError, Job
from tests.harness import serve

X = TensorSpec("x", "FP32", (-1, 3))
SIMPLE = TensorsSpec(
    inputs=(TensorSpec("INPUT0", "INT32", (-1, 16)), TensorSpec("INPUT1", "INT32", (-1, 16))),
    outputs=(TensorSpec("OUTPUT0", "INT32", (-1, 16)), TensorSpec("OUTPUT1", "INT32", (-1, 16))),
)
DOUBLER = TensorsSpec(inputs=(X,), outputs=(TensorSpec("y", "FP32", (-1, 3)),))
BATCHED = declared.Layout(DOUBLER, batched=True)


def rows_of(count: int, start: float = 0.0) -> tensors.TensorInput:
    x = np.arange(start, start + 3 * count, dtype=np.float32).reshape(count, 3)
    return declared.admit(BATCHED, tensors.TensorInput({"x": x}, reply=lambda outputs: outputs))


def problem(layout: declared.Layout, data: object) -> str:
    with pytest.raises(tensors.TensorError) as caught:
        declared.admit(layout, data)
    return str(caught.value)


# -- checking --------------------------------------------------------------------------------


def test_json_data_becomes_arrays_of_the_declared_datatype_with_its_rows():
    checked = declared.admit(
        declared.Layout(SIMPLE, batched=True), {"INPUT0": [[1] * 16] * 3, "INPUT1": [[2] * 16] * 3}
    )
    assert checked.rows == 3
    assert checked.arrays["INPUT0"].dtype == np.int32 and checked.arrays["INPUT0"].shape == (3, 16)


def test_a_single_input_may_be_sent_as_the_bare_nested_list():
    assert declared.admit(BATCHED, [[1, 2, 3]]).arrays["x"].tolist() == [[1.0, 2.0, 3.0]]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"x": [[1, 2]]}, ["input 'x'", "shape [1, 2]", "[-1, 3]"]),
        ({"x": [1, 2, 3]}, ["input 'x'", "shape [3]"]),
        ({"x": [[1, 2, 3]], "z": [1]}, ["unknown input 'z'", "declared: x FP32 [-1, 3]"]),
        ({"x": [["a", "b", "c"]]}, ["input 'x'", "string", "FP32 takes numbers"]),
        ({"x": [[1, 2, 3], [4, 5]]}, ["input 'x'", "ragged"]),
        ({"x": []}, ["shape [0]"]),
        ("text", ["data must be an object", '"x": [...]']),
    ],
)
def test_bad_json_inputs_are_refused_naming_the_tensor_and_what_was_expected(data, words):
    message = problem(BATCHED, data)
    assert all(word in message for word in words), message


def test_floats_are_not_truncated_into_integer_tensors_and_integers_must_fit():
    layout = declared.Layout(TensorsSpec((TensorSpec("n", "UINT8", (-1,)),), (X,)), batched=True)
    assert "integers" in problem(layout, {"n": [1.5]})
    assert "outside UINT8's range [0, 255]" in problem(layout, {"n": [256]})


def test_a_missing_input_and_mismatched_rows_are_refused():
    layout = declared.Layout(SIMPLE, batched=True)
    assert "input 'INPUT1' is missing" in problem(layout, {"INPUT0": [[1] * 16]})
    message = problem(layout, {"INPUT0": [[1] * 16], "INPUT1": [[1] * 16] * 2})
    assert "different numbers of rows" in message and "INPUT0 has 1, INPUT1 has 2" in message


def test_a_datatype_other_than_the_declared_one_is_refused():
    data = tensors.TensorInput({"x": np.zeros((1, 3), dtype=np.float64)})
    assert problem(BATCHED, data) == "input 'x': datatype FP64, declared FP32"


def test_binary_data_must_be_exactly_shape_times_datatype_bytes():
    raw = np.arange(6, dtype="<f4").tobytes()
    assert tensors.from_bytes("x", "FP32", (2, 3), memoryview(raw)).tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(tensors.TensorError, match=r"23 bytes of binary data, but FP32 of shape \[2, 3\] is 24"):
        tensors.from_bytes("x", "FP32", (2, 3), memoryview(raw[:-1]))


def test_bytes_elements_round_trip_and_truncated_ones_are_refused():
    values = np.array([b"a", b"", "\u00e9".encode()], dtype=object)
    raw = tensors.to_bytes(values, "BYTES")
    assert tensors.from_bytes("s", "BYTES", (3,), memoryview(raw)).tolist() == values.tolist()
    with pytest.raises(tensors.TensorError, match="past the end"):
        tensors.from_bytes("s", "BYTES", (3,), memoryview(raw[:-1]))
    with pytest.raises(tensors.TensorError, match=r"4 BYTES elements need at least 16 bytes .* is 15 bytes"):
        tensors.from_bytes("s", "BYTES", (4,), memoryview(raw))
    long = tensors.to_bytes(np.array([b"abcdefghij"], dtype=object), "BYTES")
    with pytest.raises(tensors.TensorError, match="ends after 1 of 2"):
        tensors.from_bytes("s", "BYTES", (2,), memoryview(long))
    with pytest.raises(tensors.TensorError, match="left after"):
        tensors.from_bytes("s", "BYTES", (2,), memoryview(raw))


def test_every_datatype_round_trips_through_binary():
    for datatype, dtype in tensors.DTYPES.items():
        if datatype == "BYTES":
            continue
        array = np.arange(6).astype(dtype).reshape(2, 3)
        back = tensors.from_bytes("t", datatype, (2, 3), memoryview(tensors.to_bytes(array, datatype)))
        assert back.dtype == dtype and np.array_equal(back, array), datatype


# -- stacking, splitting, outputs -------------------------------------------------------------


def test_requests_are_stacked_into_one_call_and_outputs_split_back_by_rows():
    calls = []

    def doubler(inputs):
        calls.append(inputs["x"].shape)
        return inputs["x"] * 2

    requests = [rows_of(1), rows_of(3, 100), rows_of(2, 200)]
    outputs = batch_rows.run(doubler, requests, BATCHED, lambda arrays: arrays)
    assert calls == [(6, 3)]
    assert [o["y"].shape for o in outputs] == [(1, 3), (3, 3), (2, 3)]
    for request, output in zip(requests, outputs, strict=True):
        assert np.array_equal(output["y"], request.arrays["x"] * 2)


def test_outputs_are_checked_against_the_declaration():
    layout = declared.Layout(SIMPLE, batched=True)
    request = declared.admit(layout, {"INPUT0": [[1] * 16], "INPUT1": [[2] * 16]})
    assert batch_rows.run(add_sub, [request], layout, lambda a: a)[0]["OUTPUT0"].tolist() == [[3] * 16]
    with pytest.raises(declared.OutputMismatch, match="must return a dict"):
        batch_rows.run(lambda a: a["INPUT0"], [request], layout, lambda a: a)
    with pytest.raises(declared.OutputMismatch, match="did not return output 'OUTPUT1'"):
        batch_rows.run(lambda a: {"OUTPUT0": a["INPUT0"]}, [request], layout, lambda a: a)
    with pytest.raises(declared.OutputMismatch, match="output 'OUTPUT0' is FP64, declared INT32"):
        batch_rows.run(lambda a: {"OUTPUT0": a["INPUT0"] * 0.5, "OUTPUT1": a["INPUT1"]}, [request], layout, lambda a: a)
    with pytest.raises(declared.OutputMismatch, match="1 rows for 2 input rows"):
        batch_rows.run(wrong_rows, [rows_of(1), rows_of(1)], BATCHED, lambda a: a)


def test_a_float64_result_for_an_fp32_output_is_cast():
    outputs = batch_rows.run(lambda a: a["x"].astype(np.float64), [rows_of(2)], BATCHED, lambda a: a)
    assert outputs[0]["y"].dtype == np.float32


def test_fit_rows_takes_leading_requests_up_to_max_rows():
    assert batching.fit_rows([1, 2, 3], 8) == (3, 6, False)
    assert batching.fit_rows([4, 4, 1], 8) == (2, 8, True)
    assert batching.fit_rows([5, 4], 8) == (1, 5, True), "the next request doesn't fit: waiting can't help"
    assert batching.fit_rows([12], 8) == (1, 12, True), "one request larger than an OOM-lowered size runs alone"
    assert batching.fit_rows([], 8) == (0, 0, False)


def test_a_failed_batch_is_halved_at_the_request_boundary_nearest_half_its_rows():
    assert batch_rows.middle([rows_of(6), rows_of(1), rows_of(1), rows_of(1)]) == 1
    assert batch_rows.middle([rows_of(1), rows_of(1), rows_of(1), rows_of(1)]) == 2
    assert batch_rows.middle([rows_of(1), rows_of(1), rows_of(5)]) == 2


# -- execution on a worker: isolation and OOM on row boundaries ---------------------------------


def tensor_job(call, inputs, layout=BATCHED):
    return Job(
        model=Model(call, "cpu", False),
        inputs=inputs,
        batched=True,
        on_partial=lambda *_: None,
        on_done=lambda _: None,
        is_wanted=lambda: True,
        tensors=layout,
    )


def test_one_bad_request_fails_alone_and_the_others_complete_in_stacked_calls():
    good, bad = rows_of(2, 1), rows_of(1, -10)
    requests = [good, rows_of(3, 1), bad, rows_of(1, 1)]
    result = execute(tensor_job(fail_on_negative, requests), lambda *_: None)
    errors = [o.error for o in result.outcomes]
    assert [type(e).__name__ if e else None for e in errors] == [None, None, "ValueError", None]
    assert np.array_equal(result.outcomes[0].payload["y"], good.arrays["x"] * 2)
    # 7 rows halve after the first request (2 | 5 rows), then 3 | 2, then the bad one alone
    assert [o.batch_size for o in result.outcomes] == [2, 3, 0, 1]


def test_out_of_memory_halves_on_rows_and_splits_a_request_too_large_alone():
    model = OomAboveRows(limit=2)
    requests = [rows_of(1), rows_of(5, 10)]
    result = execute(tensor_job(model, requests), lambda *_: None)
    assert all(o.error is None for o in result.outcomes)
    assert np.array_equal(result.outcomes[1].payload["y"], requests[1].arrays["x"] * 2)
    assert model.calls[0] == 6 and max(model.calls[1:]) <= 5
    assert result.oom_sizes[0] == 6 and 5 in result.oom_sizes, result.oom_sizes
    assert batching.lowered_batch_size(32, min(result.oom_sizes)) <= 2


def test_a_broken_output_contract_fails_the_batch_without_bisection():
    calls = []

    def broken(inputs):
        calls.append(1)
        return wrong_rows(inputs)

    result = execute(tensor_job(broken, [rows_of(1), rows_of(2)]), lambda *_: None)
    assert len(calls) == 1
    assert all(isinstance(o.error, BatchContractError) for o in result.outcomes)


def test_replies_encode_each_request_on_the_worker():
    request = declared.admit(BATCHED, {"x": [[1, 2, 3]]})
    result = execute(tensor_job(lambda a: a["x"] + 1, [request]), lambda *_: None)
    assert result.outcomes[0].data_json == '{"y":[[2.0,3.0,4.0]]}'


# -- through a daemon, on servd's own JSON API -------------------------------------------------

CONFIG = """
version: 1
endpoints:
  doubler:
    entrypoint: examples.tensors:fail_on_negative
    batch: {max_size: 8, max_delay_ms: 200, wait: always}
    tensors:
      inputs: [{name: x, datatype: FP32, shape: [-1, 3]}]
      outputs: [{name: y, datatype: FP32, shape: [-1, 3]}]
  rows:
    entrypoint: examples.tensors:identity
    batch: {max_size: 4, max_delay_ms: 200, wait: always}
    tensors:
      inputs: [{name: x, datatype: INT64, shape: [-1]}]
      outputs: [{name: x, datatype: INT64, shape: [-1]}, {name: rows, datatype: INT64, shape: [-1]}]
  kinds:
    entrypoint: examples.tensors:torch_kind
    tensors:
      as: torch
      inputs: [{name: x, datatype: FP32, shape: [2]}]
      outputs: [{name: y, datatype: FP32, shape: [2]}, {name: is_torch, datatype: INT64, shape: [-1]}]
"""


async def test_json_requests_to_a_tensor_endpoint_are_stacked_and_answered_per_request(tmp_path):
    async with serve(tmp_path, CONFIG, expect_errors=True) as d:
        replies = await asyncio.gather(
            d.post("doubler", {"x": [[1, 2, 3]]}),
            d.post("doubler", {"x": [[4, 5, 6], [7, 8, 9]]}),
            d.post("doubler", {"x": [[-1, 0, 0]]}),
        )
        assert replies[0].json()["data"] == {"y": [[2, 4, 6]]}
        assert replies[1].json()["data"] == {"y": [[8, 10, 12], [14, 16, 18]]}
        assert replies[2].status == 500 and "negative" in replies[2].json()["error"]["message"]
    # ids are given in arrival order, which gather doesn't fix: count the failures instead
    assert len([e for e in d.errors_logged() if e["event"] == "entrypoint raised"]) == 1, "only the bad one failed"


async def test_batch_max_size_counts_rows_and_a_request_over_it_is_refused(tmp_path):
    async with serve(tmp_path, CONFIG) as d:
        replies = await asyncio.gather(*(d.post("rows", {"x": list(range(n))}) for n in (3, 2, 1)))
        calls = [r.json()["data"]["rows"][0] for r in replies]
        assert all(c <= 4 for c in calls), calls
        assert [r.json()["timing"]["batch_size"] for r in replies] == calls
        too_many = await d.post("rows", {"x": list(range(5))})
        assert too_many.status == 422
        assert too_many.json()["error"]["message"] == "5 rows; batch.max_size=4 rows is the most one call takes"


async def test_bad_tensors_get_invalid_input_before_the_model_sees_them(tmp_path):
    async with serve(tmp_path, CONFIG) as d:
        reply = await d.post("doubler", {"x": [[1, 2]]})
        assert reply.status == 422 and reply.json()["error"]["code"] == "invalid_input"
        assert "input 'x': shape [1, 2] does not match the declared [-1, 3]" in reply.json()["error"]["message"]


async def test_tensors_as_torch_hands_the_entrypoint_torch_tensors(tmp_path):
    async with serve(tmp_path, CONFIG) as d:
        reply = await d.post("kinds", {"x": [1.5, 2]})
        assert reply.json()["data"] == {"y": [3.0, 4.0], "is_torch": [1, 1]}
