"""Declared tensors: arrays in, checked against `tensors:`, stacked into one call, split back out.

Pure functions over numpy arrays; no tornado, no torch (a torch handoff is passed in by
workers.py, and torch outputs are read through their own `.numpy()`). The transports decode what
clients send into a `TensorInput` (v2.py: the v2 JSON and binary formats; `admit` here: servd's
own JSON, `{"x": [[...], ...]}`), the endpoint checks it at admission (`admit`), and a worker
runs a batch of them as one call (`run`): on a batched endpoint the requests' inputs are
concatenated along the first dimension (the rows), the entrypoint is called once, and each
output is split back by the requests' row counts (Triton's dynamic batching). How a request's
outputs are encoded for its client is its `reply`, run on the worker after the call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from servd.config.spec import TensorSpec, TensorsSpec

Array = NDArray[Any]
Arrays = dict[str, Array]

DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),  # each element a bytes object
}
# What JSON numbers may become: a float is not silently truncated into an integer tensor.
_JSON_KINDS = {"BOOL": "b", "BYTES": "USO"}
_JSON_KINDS.update({k: "biu" for k in DTYPES if k.startswith(("INT", "UINT"))})
_JSON_KINDS.update({k: "biuf" for k in DTYPES if k.startswith("FP")})
BYTES_PREFIX = 4  # each BYTES element on the wire: a 4-byte little-endian length, then the bytes


class TensorError(ValueError):
    """A client's tensor that can't be used (wrong datatype, shape or size); the message names it."""


class OutputMismatch(Exception):
    """The entrypoint's outputs don't match `tensors.outputs` (its contract, not the input's fault)."""


def json_reply(outputs: Arrays) -> str:
    """servd's own JSON: an object of output name -> nested lists (NaN and infinity become null)."""
    value = {name: _jsonable(array) for name, array in outputs.items()}
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


@dataclass(slots=True, eq=False)
class TensorInput:
    """One request's tensors as the endpoint queues them: `rows` is the first dimension on a
    batched endpoint (1 otherwise); `reply` encodes its outputs on the worker (JSON text, or
    whatever the transport's sink sends, such as a v2 body)."""

    arrays: Arrays
    reply: Callable[[Arrays], Any] = json_reply
    rows: int = 1


@dataclass(frozen=True, slots=True)
class Layout:
    """How a batch of one endpoint is called: its declaration, and whether rows are stacked."""

    spec: TensorsSpec
    batched: bool


# -- decoding what clients send ----------------------------------------------------------------


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def declared(item: Any, each: str) -> tuple[str, str, tuple[int, ...]]:
    """An input's `{name, datatype, shape, ...}` as the v2 body and the binary frame both describe
    it, checked; `each` names the list in the error (`"of 'inputs'"`)."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise TensorError(f"each {each} must be an object with a 'name'")
    name, datatype, shape = item["name"], item.get("datatype"), item.get("shape")
    if datatype not in DTYPES:
        raise TensorError(f"input {name!r}: datatype {datatype!r} is not one of {', '.join(DTYPES)}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise TensorError(f"input {name!r}: shape must be a list of dimensions >= 0, got {shape!r}")
    return name, datatype, tuple(shape)


def from_json(name: str, datatype: str, shape: Sequence[int], data: Any) -> Array:
    """A v2 JSON input's `data` (flat or nested, row-major) as an array of `shape`."""
    array = _from_values(name, datatype, data)
    count = element_count(shape)
    if array.size != count:
        raise TensorError(f"input {name!r}: shape {list(shape)} holds {count} elements, its data has {array.size}")
    return array.reshape(shape)


def from_nested(name: str, datatype: str, data: Any) -> Array:
    """servd's JSON: nested lists whose nesting is the shape (`[[1, 2], [3, 4]]` is 2 x 2)."""
    if not isinstance(data, list):
        raise TensorError(f"input {name!r}: expected nested lists of {datatype} values, got {type(data).__name__}")
    return _from_values(name, datatype, data)


def _from_values(name: str, datatype: str, data: Any) -> Array:
    if datatype == "BYTES":
        return _bytes_array(name, data)
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError):
        raise TensorError(f"input {name!r}: data is not a regular array (ragged nested lists)") from None
    if raw.size and raw.dtype.kind not in _JSON_KINDS[datatype]:
        raise TensorError(
            f"input {name!r}: data holds {_kind_name(raw.dtype)} values; {datatype} takes {_takes(datatype)}"
        )
    dtype = DTYPES[datatype]
    if raw.size and dtype.kind in "iu" and raw.dtype.kind in "iu":
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise TensorError(f"input {name!r}: a value is outside {datatype}'s range [{info.min}, {info.max}]")
    return raw.astype(dtype, copy=False)


def _bytes_array(name: str, data: Any) -> Array:
    flat: list[Any] = list(_flatten(data)) if isinstance(data, list) else [data]
    out = np.empty(len(flat), dtype=object)
    for index, item in enumerate(flat):
        if not isinstance(item, (str, bytes)):
            raise TensorError(f"input {name!r}: BYTES data must be strings, got {type(item).__name__}")
        out[index] = item.encode("utf-8", "surrogatepass") if isinstance(item, str) else item
    if isinstance(data, list) and data and isinstance(data[0], list):
        shape = _nested_shape(data)
        if element_count(shape) != len(flat):
            raise TensorError(f"input {name!r}: data is not a regular array (ragged nested lists)")
        return out.reshape(shape)
    return out


def _nested_shape(data: list[Any]) -> tuple[int, ...]:
    shape = []
    level: Any = data
    while isinstance(level, list):
        shape.append(len(level))
        level = level[0] if level else None
    return tuple(shape)


def _flatten(data: list[Any]) -> Iterable[Any]:
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            yield item
        else:
            stack.pop()


def from_bytes(name: str, datatype: str, shape: Sequence[int], raw: memoryview) -> Array:
    """An input's binary data (the binary tensor data extension): row-major, little-endian;
    BYTES elements each a 4-byte little-endian length and the bytes. The size must be exact."""
    count = element_count(shape)
    if datatype == "BYTES":
        return unpack_bytes(name, raw, count).reshape(shape)
    dtype = DTYPES[datatype]
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise TensorError(
            f"input {name!r}: {len(raw)} bytes of binary data, "
            f"but {datatype} of shape {list(shape)} is {expected} bytes"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def unpack_bytes(name: str, raw: memoryview, count: int) -> Array:
    out = np.empty(count, dtype=object)
    at, size = 0, len(raw)
    for index in range(count):
        if at + BYTES_PREFIX > size:
            raise TensorError(f"input {name!r}: binary BYTES data ends after {index} of {count} elements")
        length = int.from_bytes(raw[at : at + BYTES_PREFIX], "little")
        at += BYTES_PREFIX
        if at + length > size:
            raise TensorError(f"input {name!r}: BYTES element {index} is {length} bytes, past the end of its data")
        out[index] = bytes(raw[at : at + length])
        at += length
    if at != size:
        raise TensorError(f"input {name!r}: {size - at} bytes of binary data left after its {count} BYTES elements")
    return out


def _kind_name(dtype: np.dtype[Any]) -> str:
    return {"b": "boolean", "i": "integer", "u": "integer", "f": "float", "U": "string", "S": "bytes"}.get(
        dtype.kind, "non-numeric"
    )


def _takes(datatype: str) -> str:
    return {"b": "true/false", "biu": "integers", "biuf": "numbers"}.get(_JSON_KINDS[datatype], "strings")


# -- encoding what goes back -------------------------------------------------------------------


def to_bytes(array: Array, datatype: str) -> bytes:
    """An output's binary data, as `from_bytes` reads it."""
    if datatype == "BYTES":
        parts: list[bytes] = []
        for item in array.ravel():
            value = item.encode("utf-8") if isinstance(item, str) else bytes(item)
            parts += (len(value).to_bytes(BYTES_PREFIX, "little"), value)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=DTYPES[datatype]).tobytes()


def to_list(array: Array, datatype: str) -> list[Any]:
    """An output's v2 JSON `data`: flat, row-major; BYTES as text (UTF-8, else TensorError)."""
    if datatype != "BYTES":
        return list(array.ravel().tolist())
    try:
        return [item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in array.ravel()]
    except UnicodeDecodeError:
        raise TensorError("a BYTES output is not UTF-8 text; ask for it as binary data") from None


def _jsonable(array: Array) -> Any:
    if array.dtype == object:
        return np.reshape(
            np.array([i.decode("utf-8", "replace") if isinstance(i, bytes) else str(i) for i in array.ravel()]),
            array.shape,
        ).tolist()
    return np.ascontiguousarray(array)


def datatype_of(dtype: np.dtype[Any]) -> str | None:
    """The v2 name of a numpy dtype (None for one the protocol has no name for)."""
    for name, known in DTYPES.items():
        if known == dtype:
            return name
    return None


# -- checking against the declaration ----------------------------------------------------------


def admit(layout: Layout, data: Any) -> TensorInput:
    """A request's data as a checked TensorInput with its row count; raises TensorError naming the
    tensor and what was expected. `data` is a TensorInput (v2, binary frames) or servd's JSON:
    an object of input name -> nested lists (or the nested lists alone, for a single input)."""
    tensor = data if isinstance(data, TensorInput) else TensorInput(_from_json_data(layout.spec, data))
    tensor.rows = check_inputs(layout.spec.inputs, tensor.arrays, layout.batched)
    return tensor


def _from_json_data(spec: TensorsSpec, data: Any) -> Arrays:
    declared = {t.name: t for t in spec.inputs}
    if isinstance(data, list) and len(spec.inputs) == 1:
        data = {spec.inputs[0].name: data}
    if not isinstance(data, dict):
        raise TensorError(f"data must be an object of input name -> nested lists, such as {_example(spec)}")
    for name in data:
        if name not in declared:
            raise TensorError(f"unknown input {name!r}; {describe(spec.inputs)}")
    return {name: from_nested(name, declared[name].datatype, value) for name, value in data.items()}


def _example(spec: TensorsSpec) -> str:
    return "{" + ", ".join(f'"{t.name}": [...]' for t in spec.inputs) + "}"


def describe(tensors: Sequence[TensorSpec]) -> str:
    """`declared: x FP32 [-1, 256], mask BOOL [-1]`: what an error message offers instead."""
    return "declared: " + ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in tensors)


def check_inputs(declared: Sequence[TensorSpec], arrays: Mapping[str, Array], batched: bool) -> int:
    """Every declared input present, none unknown, each of its datatype and shape; on a batched
    endpoint all with the same number of rows (returned; 1 otherwise)."""
    names = {t.name for t in declared}
    for name in arrays:
        if name not in names:
            raise TensorError(f"unknown input {name!r}; {describe(declared)}")
    rows: dict[str, int] = {}
    for tensor in declared:
        if tensor.name not in arrays:
            raise TensorError(f"input {tensor.name!r} is missing; {describe(declared)}")
        array = arrays[tensor.name]
        _check_one("input", tensor, array)
        if batched:
            rows[tensor.name] = array.shape[0]
    if not batched:
        return 1
    counts = set(rows.values())
    if len(counts) > 1:
        shown = ", ".join(f"{name} has {count}" for name, count in rows.items())
        raise TensorError(f"inputs have different numbers of rows (the first dimension): {shown}")
    count = counts.pop()
    if count < 1:
        raise TensorError(f"input {declared[0].name!r} has 0 rows; send at least one")
    return count


def _check_one(side: str, tensor: TensorSpec, array: Array) -> None:
    expected = DTYPES[tensor.datatype]
    if array.dtype != expected:
        got = datatype_of(array.dtype) or str(array.dtype)
        raise TensorError(f"{side} {tensor.name!r}: datatype {got}, declared {tensor.datatype}")
    if not fits(array.shape, tensor.shape):
        raise TensorError(
            f"{side} {tensor.name!r}: shape {list(array.shape)} does not match the declared {list(tensor.shape)}"
            " (-1 = any size)"
        )


def fits(shape: Sequence[int], declared: Sequence[int]) -> bool:
    return len(shape) == len(declared) and all(d in (-1, s) for s, d in zip(shape, declared, strict=True))


# -- one call for a batch ----------------------------------------------------------------------


def run(
    call: Callable[[Any], Any], requests: Sequence[TensorInput], layout: Layout, handoff: Callable[[Arrays], Any]
) -> list[Arrays]:
    """Call the entrypoint once for `requests`: stacked along the rows on a batched endpoint
    (an unbatched one runs one request a call); returns each request's outputs."""
    spec = layout.spec
    arrays = stack(requests, [t.name for t in spec.inputs]) if layout.batched else requests[0].arrays
    outputs = outputs_of(call(handoff(arrays)), spec.outputs)
    if not layout.batched:
        return [outputs]
    return split(outputs, [r.rows for r in requests])


def stack(requests: Sequence[TensorInput], names: Sequence[str]) -> Arrays:
    """One array per input: the requests' arrays concatenated along the first dimension."""
    if len(requests) == 1:
        return dict(requests[0].arrays)
    return {name: np.concatenate([r.arrays[name] for r in requests]) for name in names}


def outputs_of(value: Any, declared: Sequence[TensorSpec]) -> Arrays:
    """What the entrypoint returned as arrays of the declared outputs: a dict of name -> array, or
    one array for a single output; torch tensors are brought to the CPU; a float64 result for an
    FP32 output is cast (same kind), anything else that differs is an OutputMismatch."""
    if not isinstance(value, Mapping):
        if len(declared) != 1:
            raise OutputMismatch(
                f"the entrypoint returned a {type(value).__name__}; with {len(declared)} outputs declared it "
                f"must return a dict of name -> array ({describe(declared)})"
            )
        value = {declared[0].name: value}
    names = {t.name for t in declared}
    unknown = [str(name) for name in value if name not in names]
    if unknown:
        raise OutputMismatch(
            f"the entrypoint returned outputs {unknown} that tensors.outputs doesn't declare ({describe(declared)})"
        )
    outputs: Arrays = {}
    for tensor in declared:
        if tensor.name not in value:
            raise OutputMismatch(f"the entrypoint did not return output {tensor.name!r} ({describe(declared)})")
        outputs[tensor.name] = _output_array(tensor, value[tensor.name])
    return outputs


def _output_array(tensor: TensorSpec, value: Any) -> Array:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, wherever it lives
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=object) if tensor.datatype == "BYTES" else np.asarray(value)
    expected = DTYPES[tensor.datatype]
    if array.dtype != expected:
        if not np.can_cast(array.dtype, expected, "same_kind"):
            raise OutputMismatch(
                f"output {tensor.name!r} is {datatype_of(array.dtype) or array.dtype}, declared {tensor.datatype}"
            )
        array = array.astype(expected)
    if not fits(array.shape, tensor.shape):
        raise OutputMismatch(
            f"output {tensor.name!r} has shape {list(array.shape)}, declared {list(tensor.shape)} (-1 = any size)"
        )
    return array


def split(outputs: Arrays, rows: Sequence[int]) -> list[Arrays]:
    """Each request's rows of every output, in order (views, not copies)."""
    total = sum(rows)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            got = "no rows (a scalar)" if array.ndim == 0 else f"{array.shape[0]} rows"
            raise OutputMismatch(
                f"output {name!r} has {got} for {total} input rows; "
                "a batched tensor endpoint returns one row per input row"
            )
    parts: list[Arrays] = []
    start = 0
    for count in rows:
        parts.append({name: array[start : start + count] for name, array in outputs.items()})
        start += count
    return parts


# -- bisection on row boundaries ---------------------------------------------------------------


def middle(requests: Sequence[TensorInput]) -> int:
    """Where to halve a failed batch: the request boundary nearest half its rows (at least one
    request on each side), so the halves carry about equal work and no request is cut."""
    total = sum(r.rows for r in requests)
    best, best_gap, seen = 1, total, 0
    for index, request in enumerate(requests[:-1], start=1):
        seen += request.rows
        gap = abs(2 * seen - total)
        if gap < best_gap:
            best, best_gap = index, gap
    return best


def halve_rows(request: TensorInput) -> tuple[TensorInput, TensorInput]:
    """One request of several rows that ran out of memory alone: its first and second half."""
    cut = request.rows // 2
    first = {name: array[:cut] for name, array in request.arrays.items()}
    second = {name: array[cut:] for name, array in request.arrays.items()}
    return (
        TensorInput(first, request.reply, cut),
        TensorInput(second, request.reply, request.rows - cut),
    )


def join_rows(parts: Sequence[Arrays]) -> Arrays:
    """The outputs of a request's halves, joined back along the rows."""
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
