"""The v2 infer parser as a pure function, fuzzed (issue 25): any body and header is a request or a V2Error.

`v2_codec.parse_infer` (and `json_data`, for an endpoint without tensors) takes whatever a client
sends to /v2/models/{name}/infer; the handler turns a V2Error into a 400 with its message, and
anything else into a 500 with a traceback. So for every input the parser must return a value or
raise V2Error, never another exception: bodies are built valid (JSON and binary inputs of every
datatype), then broken field by field (shapes with huge or zero dimensions, byte sizes that don't
match, wrong types everywhere, odd header lengths such as '²'), and raw junk is tried too. Each
V2Error's message is short text a client can read. Bounded and derandomized like test_fuzz
(SERVD_FUZZ_EXAMPLES, SERVD_FUZZ_RANDOM).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from servd.inputs import tensors
from servd.protocols import v2_codec as v2
from tests.test_fuzz import EXAMPLES, JSON_SCALARS, JSON_VALUES, fuzz_settings

DATATYPES = [*tensors.DTYPES, "int32", "", "INT33", 7, None]
HUGE = [2**31, 2**62, 2**63, 2**64, 2**70, 10**30, 300_000_000]
DIMENSIONS = st.integers(-2, 6) | st.sampled_from(HUGE) | JSON_SCALARS
SHAPES = (
    st.lists(DIMENSIONS, max_size=4) | st.sampled_from([[0, 2**70], [2**70], [300_000_000], [1] * 40]) | JSON_VALUES
)
SIZES = st.integers(-3, 64) | st.sampled_from([*HUGE, "8", None, True, 1.5])
HEADER_LENGTHS = (
    st.none()
    | st.integers(-5, 400).map(str)
    | st.sampled_from(
        ["²", "٣", "\uff11\uff12", "9" * 5000, "1" * 19, " 12 ", "+12", "-0", "0x10", "1e3", "", "12\x00"]
    )
    | st.text(max_size=8)
)


def valid_input(draw: st.DrawFn, index: int) -> tuple[dict[str, Any], bytes]:
    """One input of a random datatype and shape, as JSON data or binary data."""
    datatype = draw(st.sampled_from(list(tensors.DTYPES)))
    shape = draw(st.lists(st.integers(0, 3), max_size=3))
    count = int(np.prod(shape)) if shape else 1
    if datatype == "BYTES":
        array = np.array([draw(st.binary(max_size=6)) for _ in range(count)], dtype=object).reshape(shape)
    else:
        array = np.arange(count).astype(tensors.DTYPES[datatype]).reshape(shape)
    item: dict[str, Any] = {"name": f"in{index}", "datatype": datatype, "shape": shape}
    if draw(st.booleans()):
        chunk = tensors.to_bytes(array, datatype)
        item["parameters"] = {"binary_data_size": len(chunk)}
        return item, chunk
    item["data"] = [b.decode("latin-1") for b in array.ravel()] if datatype == "BYTES" else array.ravel().tolist()
    return item, b""


BREAKS = ["shape", "datatype", "size", "data", "name", "drop", "parameters", "item", "raw", "outputs", "request"]


@st.composite
def bodies(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """An infer body (JSON, then binary inputs) and its Inference-Header-Content-Length: built
    valid, then broken in none, one or several ways."""
    items, chunks = zip(*(valid_input(draw, i) for i in range(draw(st.integers(1, 3)))), strict=True)
    inputs: list[Any] = [dict(item) for item in items]
    header: dict[str, Any] = {"inputs": inputs}
    raw = b"".join(chunks)
    for _ in range(draw(st.integers(0, 3))):
        which, at = draw(st.sampled_from(BREAKS)), draw(st.integers(0, len(inputs) - 1))
        item = inputs[at] if isinstance(inputs[at], dict) else {}
        if which == "shape":
            item["shape"] = draw(SHAPES)
        elif which == "datatype":
            item["datatype"] = draw(st.sampled_from(DATATYPES))
        elif which == "size":
            item["parameters"] = {"binary_data_size": draw(SIZES)}
        elif which == "data":
            item["data"] = draw(JSON_VALUES | st.lists(st.integers() | st.floats(allow_nan=False), max_size=6))
        elif which == "name":
            item["name"] = draw(st.sampled_from(["in0", "in1", ""]) | JSON_SCALARS)
        elif which == "drop":
            item.pop(draw(st.sampled_from(["name", "datatype", "shape", "data", "parameters"])), None)
        elif which == "parameters":
            item["parameters"] = draw(JSON_VALUES)
        elif which == "item":
            inputs[at] = draw(JSON_VALUES)
        elif which == "raw":
            cut = draw(st.integers(0, len(raw)))
            raw = raw[:cut] + draw(st.binary(max_size=12))
        elif which == "outputs":
            header["outputs"] = draw(JSON_VALUES | st.lists(st.fixed_dictionaries({"name": st.text(max_size=3)})))
        else:
            header[draw(st.sampled_from(["id", "parameters", "inputs"]))] = draw(
                JSON_VALUES
                | st.fixed_dictionaries(
                    {},
                    optional={
                        k: JSON_VALUES | st.sampled_from([10**400, 2**70, -1])
                        for k in ("priority", "timeout", "binary_data_output")
                    },
                )
            )
    text = json.dumps(header).encode()
    length = draw(HEADER_LENGTHS) if draw(st.integers(0, 4)) == 0 else (None if not raw else str(len(text)))
    return text + raw, length


JUNK = st.tuples(st.binary(max_size=64) | st.text(max_size=64).map(str.encode), HEADER_LENGTHS)


def parses_or_refuses(body: bytes, length: str | None) -> v2.InferRequest | None:
    """The one promise: a request, or a V2Error whose message is readable text."""
    try:
        request = v2.parse_infer(body, length)
    except v2.V2Error as exc:
        message = str(exc)
        assert message and len(message) < 2000 and "Traceback" not in message, message
        return None
    assert isinstance(request, v2.InferRequest)
    for name, array in request.inputs.items():
        assert isinstance(name, str) and isinstance(array, np.ndarray)
    return request


@fuzz_settings(max(100, EXAMPLES))
@given(bodies())
def test_any_infer_body_is_a_request_or_a_v2_error(example):
    """Built-then-broken bodies: every one parses or is refused with V2Error (a 400 naming the
    problem), never a 500; what parses also gets a V2Error or JSON data from json_data."""
    request = parses_or_refuses(*example)
    if request is not None:
        with contextlib.suppress(v2.V2Error):
            v2.json_data(request, 128)


@fuzz_settings(max(50, EXAMPLES // 2))
@given(JUNK)
def test_junk_bodies_and_header_lengths_are_refused_with_a_v2_error(example):
    """Random bytes and text with any Inference-Header-Content-Length: a request or V2Error."""
    parses_or_refuses(*example)


def test_the_inputs_of_issue_25_are_v2_errors_naming_the_problem():
    """The inputs that were 500s with a traceback (issue 25, bug 5) and the BYTES shape that made
    servd allocate 2.4 GB (bug 1) are each a V2Error that says what is wrong."""
    cases = {
        "too large for any INT32 tensor": (
            {"name": "x", "datatype": "INT32", "shape": [0, 2**70], "parameters": {"binary_data_size": 0}},
            None,
        ),
        "too large for any FP32 tensor": ({"name": "x", "datatype": "FP32", "shape": [0, 2**70], "data": []}, None),
        "too large for any BYTES tensor": (
            {"name": "x", "datatype": "BYTES", "shape": [2**70], "parameters": {"binary_data_size": 0}},
            None,
        ),
        "300000000 BYTES elements need at least 1200000000 bytes": (
            {"name": "x", "datatype": "BYTES", "shape": [300_000_000], "parameters": {"binary_data_size": 0}},
            None,
        ),
        "must be a number of bytes (ASCII digits), got '²'": (
            {"name": "x", "datatype": "INT32", "shape": [1], "data": [1]},
            "²",
        ),
        "must be a number of bytes (ASCII digits), got '999": (
            {"name": "x", "datatype": "INT32", "shape": [1], "data": [1]},
            "9" * 5000,
        ),
    }
    for words, (item, length) in cases.items():
        try:
            v2.parse_infer(json.dumps({"inputs": [item]}).encode(), length)
        except v2.V2Error as exc:
            assert words in str(exc), (words, str(exc))
        else:
            raise AssertionError(f"{item} was accepted")
