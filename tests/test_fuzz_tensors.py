"""Malformed tensors against one real daemon, as the JSON path is fuzzed (issue 18; tests/test_fuzz.py).

v2 infer bodies and binary websocket frames are built valid, then broken one way or several at
once (truncated, a header length past the body, byte sizes that don't match shape x datatype,
bytes left over, odd shapes and datatypes, junk). Each answer must be a result that is right or
a clear refusal (400 with {"error": ...} on /v2, bad_request/invalid_input on the websocket),
never a 500 or a dropped connection; a bystander is served throughout and nothing is logged as
an error. The same parsers are also fuzzed as pure functions (frames.parse, declared.admit on
servd's JSON, with shapes no array can have among them): a value or their own error type, never
another exception (issue 25). Derandomized and bounded like test_fuzz (SERVD_FUZZ_EXAMPLES,
SERVD_FUZZ_RANDOM).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from servd.client._tensors import read_frame
from servd.inputs import declared, tensors
from servd.inputs.declared import TensorSpec, TensorsSpec
from servd.protocols import frames
from servd.protocols import ws_messages as protocol
from tests.harness import WsClient, eventually, serve
from tests.test_fuzz import (
    EXAMPLES,
    JSON_SCALARS,
    JSON_VALUES,
    Probed,
    bystander_is_unaffected,
    fuzz_settings,
    run_examples,
)

CONFIG = """
version: 1
server:
  max_message_bytes: 4096
endpoints:
  simple:
    entrypoint: examples.tensors:add_sub
    batch: {max_size: 8, max_delay_ms: 1}
    tensors:
      inputs: [{name: INPUT0, datatype: INT32, shape: [-1, 4]}, {name: INPUT1, datatype: INT32, shape: [-1, 4]}]
      outputs: [{name: OUTPUT0, datatype: INT32, shape: [-1, 4]}, {name: OUTPUT1, datatype: INT32, shape: [-1, 4]}]
  echo:
    entrypoint: examples.echo:echo
"""
DATATYPES = ["INT32", "INT64", "FP32", "FP16", "BOOL", "BYTES", "UINT8", "int32", "", "INT33"]
SHAPES = st.lists(st.integers(-2, 10), max_size=3) | st.just([10**9, 4]) | st.just([2**62, 2**62])


@st.composite
def broken(draw: st.DrawFn) -> tuple[list[dict[str, Any]], bytes]:
    """A valid description of the two inputs with their bytes, then some of it broken."""
    rows = draw(st.integers(1, 3))
    arrays = [np.arange(4 * rows, dtype="<i4").reshape(rows, 4) + k for k in (0, 100)]
    described = [{"name": f"INPUT{k}", "datatype": "INT32", "shape": [rows, 4], "size": 16 * rows} for k in (0, 1)]
    raw = b"".join(a.tobytes() for a in arrays)
    for _ in range(draw(st.integers(0, 3))):
        which, item = (
            draw(st.sampled_from(["size", "shape", "datatype", "name", "drop", "raw"])),
            draw(st.integers(0, len(described) - 1)),
        )
        if which == "size":
            described[item]["size"] = draw(st.integers(-3, 200) | st.sampled_from([10**12, "16", None]))
        elif which == "shape":
            described[item]["shape"] = draw(SHAPES)
        elif which == "datatype":
            described[item]["datatype"] = draw(st.sampled_from(DATATYPES))
        elif which == "name":
            described[item]["name"] = draw(st.sampled_from(["INPUT0", "INPUT1", "x", ""]))
        elif which == "drop" and len(described) > 1:
            described.pop(item)
        else:
            cut = draw(st.integers(0, len(raw)))
            raw = raw[:cut] + draw(st.binary(max_size=12)) if draw(st.booleans()) else raw[:cut]
    return described, raw


def v2_body(described: list[dict[str, Any]], raw: bytes) -> dict[str, Any]:
    inputs = []
    for item in described:
        entry = {k: v for k, v in item.items() if k != "size"}
        entry["parameters"] = {"binary_data_size": item["size"]}
        inputs.append(entry)
    return {"inputs": inputs, "parameters": {"binary_data_output": True}}


HEADER_LENGTHS = st.none() | st.integers(-5, 5000).map(str) | st.sampled_from(["x", "", " 12", "1e3"])


def expected_sum(raw: bytes, described: list[dict[str, Any]]) -> np.ndarray | None:
    """The OUTPUT0 a request that was still valid must get."""
    if len(described) != 2 or sum(d["size"] for d in described) != len(raw):
        return None
    first = np.frombuffer(raw[: described[0]["size"]], dtype="<i4").reshape(described[0]["shape"])
    second = np.frombuffer(raw[described[0]["size"] :], dtype="<i4").reshape(described[1]["shape"])
    by_name = {described[0]["name"]: first, described[1]["name"]: second}
    return by_name["INPUT0"] + by_name["INPUT1"]


async def test_broken_v2_binary_bodies_get_a_result_or_a_clear_400_and_nothing_else(tmp_path):
    async with serve(tmp_path, CONFIG) as d:
        bystander = await d.ws()
        outcomes: dict[int, int] = {}

        async def check(example: tuple[tuple[list[dict[str, Any]], bytes], str | None, bool]) -> None:
            (described, raw), length, junk_json = example
            header = b"{not json" if junk_json else json.dumps(v2_body(described, raw)).encode()
            headers = {"Inference-Header-Content-Length": length if length is not None else str(len(header))}
            reply = await d.http("POST", "/v2/models/simple/infer", raw=header + raw, headers=headers)
            shown = (described, raw[:40], length, reply.status, reply.body[:300])
            outcomes[reply.status] = outcomes.get(reply.status, 0) + 1
            assert reply.status in (200, 400, 413), shown
            if reply.status != 200:
                message = json.loads(reply.body)["error"]
                assert isinstance(message, str) and message and "Traceback" not in message, shown
                return
            header_length = int(reply.headers["Inference-Header-Content-Length"])
            answer = json.loads(reply.body[:header_length])
            got = np.frombuffer(
                reply.body[header_length:][: answer["outputs"][0]["parameters"]["binary_data_size"]], "<i4"
            )
            want = expected_sum(raw, described)
            assert want is not None and np.array_equal(got, want.ravel()), shown

        strategy = st.tuples(broken(), HEADER_LENGTHS, st.sampled_from([False] * 5 + [True]))
        await run_examples(strategy, check, fuzz_settings(max(50, EXAMPLES // 2)))
        assert outcomes.get(200) and outcomes.get(400), outcomes
        await bystander_is_unaffected(d, bystander)
        assert d.daemon.endpoints["simple"].is_idle()


class FramesClient(WsClient):
    """Keeps binary completed frames as the messages they stand for."""

    def _parse(self, text: str | bytes) -> dict[str, Any]:
        return read_frame(text) if isinstance(text, bytes) else super()._parse(text)


def frame(request_id: str, described: list[dict[str, Any]], raw: bytes, length: int | None) -> bytes:
    header = json.dumps({"type": "submit", "id": request_id, "endpoint": "simple", "data": described}).encode()
    return struct.pack("<I", len(header) if length is None else length) + header + raw


async def test_broken_binary_frames_get_a_result_or_one_refusal_and_the_socket_stays_open(tmp_path):
    async with serve(tmp_path, CONFIG) as d:
        fuzzed, bystander = await d.ws(), await d.ws()
        fuzzed.__class__ = FramesClient  # its reader parses each message as it arrives
        probed = Probed(fuzzed)
        seen: set[str] = set()
        count = 0

        async def check(example: tuple[tuple[list[dict[str, Any]], bytes], int | None]) -> None:
            nonlocal count
            (described, raw), length = example
            count += 1
            request_id = f"f{count}"
            await fuzzed.send(frame(request_id, described, raw, length))

            def ended() -> bool:  # its own terminal: a tensor call may end after the echo probe's
                return any(
                    m["type"] in ("completed", "error") and m.get("id") in (request_id, None)
                    for m in fuzzed.messages[probed.mark :]
                )

            await eventually(ended, f"an answer to {request_id}", interval=0.002)
            got = await probed.answers_since_mark()
            shown = (described, raw[:40], length, got)
            assert len([m for m in got if m["type"] in ("completed", "error")]) == 1, shown
            last = got[-1]
            seen.add(last["type"] if last["type"] == "completed" else last["error"]["code"])
            if last["type"] == "error":
                assert last["error"]["code"] in ("bad_request", "invalid_input", "too_large"), shown
                assert last["id"] in (request_id, None), shown
            else:
                assert last["id"] == request_id, shown
            assert not fuzzed.closed

        lengths = st.none() | st.none() | st.integers(0, 6000)
        await run_examples(st.tuples(broken(), lengths), check, fuzz_settings(max(50, EXAMPLES // 2)))
        assert "bad_request" in seen, seen
        await bystander_is_unaffected(d, bystander)


# -- the same parsers as pure functions: a value or the module's own error, nothing else -----------


def frames_parse_or_refuse(payload: bytes) -> None:
    """frames.parse: a Submit carrying a TensorInput, or ProtocolError (bad_request on the socket)."""
    try:
        submit = frames.parse(payload)
    except protocol.ProtocolError as exc:
        assert exc.message and "Traceback" not in exc.message
        return
    assert isinstance(submit.data, tensors.TensorInput)


ODD_SHAPES = st.sampled_from([[0, 2**70], [2**70], [100_000_000], [300_000_000], [1] * 40, [2**31, 2**31, 4]])


@fuzz_settings(max(100, EXAMPLES))
@given(st.tuples(broken(), st.none() | st.integers(0, 600), ODD_SHAPES, st.sampled_from(DATATYPES)))
def test_any_binary_frame_parses_or_is_a_protocol_error(example):
    """Built-then-broken binary submits, some with a shape no array can have or a BYTES count the
    frame can't hold (issue 25: [1e8] allocated 760 MB, [0, 2**70] raised ValueError): each is a
    Submit or a ProtocolError, and a refusal allocates nothing (checked by the daemon tests)."""
    (described, raw), length, odd, datatype = example
    frames_parse_or_refuse(frame("f", described, raw, length))
    odd_one = [{**described[0], "shape": odd, "datatype": datatype}, *described[1:]]
    frames_parse_or_refuse(frame("f", odd_one, raw, None))


SPEC = TensorsSpec(
    inputs=(TensorSpec("x", "FP32", (-1, 2)), TensorSpec("s", "BYTES", (-1,))),
    outputs=(TensorSpec("y", "FP32", (-1, 2)),),
)
NESTED = st.recursive(
    JSON_SCALARS | st.sampled_from([2**64, -(2**63) - 1, 10**30, 1e308, "\udc80"]),
    lambda inner: st.lists(inner, max_size=3),
    max_leaves=10,
)


@fuzz_settings(max(100, EXAMPLES))
@given(st.dictionaries(st.sampled_from(["x", "s", "z"]), NESTED | JSON_VALUES, max_size=3) | NESTED | JSON_VALUES)
def test_any_servd_json_data_is_a_tensor_input_or_a_tensor_error(data):
    """servd's own JSON for a tensor endpoint ({name: nested lists}) is admitted or refused with
    TensorError (invalid_input), never another exception, whatever the nesting and values."""
    for batched in (True, False):
        try:
            admitted = declared.admit(declared.Layout(SPEC, batched), data)
        except tensors.TensorError as exc:
            assert str(exc) and "Traceback" not in str(exc)
            continue
        assert set(admitted.arrays) == {"x", "s"} and admitted.rows >= 1
