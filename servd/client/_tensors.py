"""numpy arrays over servd's binary websocket frames (docs/protocols/websocket.md, "Binary frames"), client side.

A dict of name -> numpy array sent to an endpoint with `tensors:` goes as one binary frame and
its result comes back as a dict of name -> array. numpy is imported only when arrays are sent
or received: `import servd.client` needs tornado alone.
"""

from __future__ import annotations

import json
import struct
from typing import Any

LENGTH = struct.Struct("<I")
DATATYPES = {
    "bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "float16": "FP16", "float32": "FP32", "float64": "FP64", "object": "BYTES",
}  # fmt: skip
DTYPES = {datatype: name for name, datatype in DATATYPES.items()}


def is_arrays(data: Any) -> bool:
    """A non-empty dict whose values are all numpy arrays."""
    return isinstance(data, dict) and bool(data) and all(_is_ndarray(v) for v in data.values())


def _is_ndarray(value: Any) -> bool:
    kind = type(value)
    return kind.__name__ == "ndarray" and kind.__module__ == "numpy"


def as_json(data: Any) -> Any:
    """Arrays as nested lists, for the HTTP transport (BYTES as text)."""
    if _is_ndarray(data):
        if data.dtype == object:
            return [as_json(v) for v in data] if data.ndim > 1 else [_text(v) for v in data]
        return data.tolist()
    if isinstance(data, dict):
        return {k: as_json(v) for k, v in data.items()}
    return data


def _text(value: Any) -> Any:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def submit_frame(request_id: int, endpoint: str, arrays: dict[str, Any], fields: str = "") -> bytes:
    """The binary submit frame: header length, header (a submit whose data describes the
    tensors), then each tensor's bytes. `fields` are more members as JSON text, or ""."""
    described, chunks = [], []
    for name, array in arrays.items():
        datatype, raw = _encode(name, array)
        described.append({"name": name, "datatype": datatype, "shape": list(array.shape), "size": len(raw)})
        chunks.append(raw)
    header = (
        f'{{"type":"submit","id":{request_id},"endpoint":{json.dumps(endpoint)},'
        f'"data":{json.dumps(described, separators=(",", ":"))}{fields}}}'
    ).encode()
    return LENGTH.pack(len(header)) + header + b"".join(chunks)


def _encode(name: str, array: Any) -> tuple[str, bytes]:
    import numpy as np

    datatype = DATATYPES.get(array.dtype.name)
    if datatype is None:
        raise ValueError(f"array {name!r} is of dtype {array.dtype}, which the v2 datatypes can't carry")
    if datatype != "BYTES":
        return datatype, np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    parts: list[bytes] = []
    for item in array.ravel():
        value = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts += (len(value).to_bytes(4, "little"), value)
    return datatype, b"".join(parts)


def read_frame(frame: bytes) -> dict[str, Any]:
    """A binary completed frame as the message it stands for, its `data` a dict of name -> array."""
    import numpy as np

    (length,) = LENGTH.unpack_from(frame)
    at = LENGTH.size + length
    message: dict[str, Any] = json.loads(frame[LENGTH.size : at])
    data: dict[str, Any] = {}
    for output in message.pop("outputs", []):
        raw, at = frame[at : at + output["size"]], at + output["size"]
        shape, datatype = tuple(output["shape"]), output["datatype"]
        if datatype == "BYTES":
            data[output["name"]] = _unpack_bytes(raw, shape)
        else:
            data[output["name"]] = np.frombuffer(raw, dtype=np.dtype(DTYPES[datatype]).newbyteorder("<")).reshape(shape)
    message["data"] = data
    return message


def _unpack_bytes(raw: bytes, shape: tuple[int, ...]) -> Any:
    import numpy as np

    items, at = [], 0
    while at < len(raw):
        size = int.from_bytes(raw[at : at + 4], "little")
        items.append(raw[at + 4 : at + 4 + size])
        at += 4 + size
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out.reshape(shape)
