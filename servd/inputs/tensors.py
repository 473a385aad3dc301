"""The tensor codec: what clients send, as numpy arrays, and arrays back into what they read.

Pure functions over bytes, JSON values and numpy arrays; no tornado, no torch, no threads of
their own (decoding runs on the loop, at admission; encoding on a worker, after the call). Every
transport that carries tensors decodes them here: the v2 JSON and binary formats
(protocols/v2_codec.py), binary websocket frames (protocols/frames.py) and servd's own JSON
(`from_nested`, through inputs/declared.py). What a tensor must look like for one endpoint is
inputs/declared.py's job; stacking requests into one call is runners/batch_rows.py's.

Nothing is allocated for a tensor before its declared size is checked against what was sent: a
shape is refused if numpy could not hold it (`check_shape`, before any data is read), binary
data must be exactly shape x item size, and BYTES data must hold at least 4 bytes (an element's
length) per declared element before the element array is made. A client can't make servd
allocate more than its body holds, whatever shape it declares.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

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
MAX_DIMS = 32  # numpy 1.x's limit (2.x allows 64); no model input has more
# The most a declared shape may span, each dimension counted as at least 1, times its item size:
# numpy refuses anything past 2**63 - 1 bytes (even with a 0 dimension), so this keeps every
# shape that reaches numpy one it can hold, and a shape like [0, 2**70] a clear refusal.
MAX_SPAN_BYTES = 2**62


class TensorError(ValueError):
    """A client's tensor that can't be used (wrong datatype, shape or size); the message names it."""


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


# -- shapes and sizes, before anything is allocated ---------------------------------------------


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def described_input(item: Any, each: str) -> tuple[str, str, tuple[int, ...]]:
    """An input's `{name, datatype, shape, ...}` as the v2 body and the binary frame both describe
    it, checked (a shape numpy can hold, see `check_shape`); `each` names the list in the error
    (`"of 'inputs'"`)."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise TensorError(f"each {each} must be an object with a 'name'")
    name, datatype, shape = item["name"], item.get("datatype"), item.get("shape")
    if not isinstance(datatype, str) or datatype not in DTYPES:
        raise TensorError(f"input {name!r}: datatype {_shown(datatype)} is not one of {', '.join(DTYPES)}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise TensorError(f"input {name!r}: shape must be a list of dimensions >= 0, got {_shown(shape)}")
    check_shape(name, datatype, shape)
    return name, datatype, tuple(shape)


def check_shape(name: str, datatype: str, shape: Sequence[int]) -> None:
    """Refuse a shape no array could have: more than MAX_DIMS dimensions, or dimensions (a 0
    counted as 1) whose product times the item size passes MAX_SPAN_BYTES. Stops multiplying as
    soon as the bound is passed, so a long list of huge dimensions costs no big-number arithmetic."""
    if len(shape) > MAX_DIMS:
        raise TensorError(f"input {name!r}: shape has {len(shape)} dimensions; at most {MAX_DIMS} are supported")
    span = DTYPES[datatype].itemsize
    for dimension in shape:
        span *= max(dimension, 1)
        if span > MAX_SPAN_BYTES:
            raise TensorError(
                f"input {name!r}: shape {_shown(list(shape))} is too large for any {datatype} tensor: its "
                "dimensions (a 0 counted as 1) multiply past what an array can hold (2**62 bytes)"
            )


def _shown(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# -- decoding what clients send ----------------------------------------------------------------


def from_json(name: str, datatype: str, shape: Sequence[int], data: Any) -> Array:
    """A v2 JSON input's `data` (flat or nested, row-major) as an array of `shape`. The array is
    made from the data sent (bounded by the body), then compared with the shape."""
    check_shape(name, datatype, shape)
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
    except (ValueError, TypeError, OverflowError):
        raise TensorError(f"input {name!r}: data is not a regular array (ragged nested lists)") from None
    if raw.ndim > MAX_DIMS:
        raise TensorError(f"input {name!r}: data is nested {raw.ndim} deep; at most {MAX_DIMS} dimensions")
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
    shape = _nested_shape(data) if isinstance(data, list) and data and isinstance(data[0], list) else None
    if shape is not None and len(shape) > MAX_DIMS:
        raise TensorError(f"input {name!r}: data is nested {len(shape)} deep; at most {MAX_DIMS} dimensions")
    if shape is not None and element_count(shape) != len(flat):
        raise TensorError(f"input {name!r}: data is not a regular array (ragged nested lists)")
    out = np.empty(len(flat), dtype=object)  # one slot per element already in the parsed body
    for index, item in enumerate(flat):
        if not isinstance(item, (str, bytes)):
            raise TensorError(f"input {name!r}: BYTES data must be strings, got {type(item).__name__}")
        out[index] = item.encode("utf-8", "surrogatepass") if isinstance(item, str) else item
    return out if shape is None else out.reshape(shape)


def _nested_shape(data: list[Any]) -> tuple[int, ...]:
    shape: list[int] = []
    level: Any = data
    while isinstance(level, list) and len(shape) <= MAX_DIMS:
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
    BYTES elements each a 4-byte little-endian length and the bytes. The size must be exact,
    and is checked before anything is allocated."""
    check_shape(name, datatype, shape)
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
    """`count` BYTES elements from `raw`; refused before the element array is made when `raw`
    can't hold even their 4-byte lengths (a declared [300000000] with no data would otherwise
    make a 2.4 GB array of references first)."""
    size = len(raw)
    if count * BYTES_PREFIX > size:
        raise TensorError(
            f"input {name!r}: {count} BYTES elements need at least {count * BYTES_PREFIX} bytes "
            f"(a {BYTES_PREFIX}-byte length each), but its binary data is {size} bytes"
        )
    out = np.empty(count, dtype=object)
    at = 0
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
