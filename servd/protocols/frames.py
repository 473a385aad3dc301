"""Binary websocket frames: tensors on servd's own queue protocol. Pure.

A binary frame is a 4-byte little-endian length N, N bytes of JSON header, then the tensors'
raw bytes one after another (row-major, little-endian; BYTES elements each a 4-byte
little-endian length and the bytes, as in the v2 binary tensor data extension):

    submit:    {"type":"submit","id":..,"endpoint":..,"progress":..,"priority":..,"deadline_s":..,
                "data":[{"name","datatype","shape","size"}, ...]}  + the inputs' bytes
    completed: {"type":"completed","id":..,"outputs":[{"name","datatype","shape","size"}, ...],
                "timing":{...}}  + the outputs' bytes

The submit header is an ordinary submit message whose `data` describes the tensors that follow;
`size` is each tensor's byte count. Every other message (queued, estimation, started, error,
cancel) stays a JSON text frame. Only an endpoint with `tensors:` takes binary submits.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from servd.inputs import tensors
from servd.protocols import ws_messages as protocol

LENGTH = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class Encoded:
    """A request's outputs, encoded on the worker: their description (JSON text) and raw bytes."""

    outputs_json: str
    raw: bytes


def parse(frame: bytes, max_depth: int = protocol.MAX_DEPTH) -> protocol.Submit:
    """A binary submit -> Submit whose data is a TensorInput (its reply set by the transport);
    raises protocol.ProtocolError naming what is wrong (with the id once it was read)."""
    if len(frame) < LENGTH.size:
        raise protocol.ProtocolError("a binary frame starts with a 4-byte little-endian header length")
    (length,) = LENGTH.unpack_from(frame)
    if length > len(frame) - LENGTH.size:
        raise protocol.ProtocolError(
            f"the header length is {length}, past the end of the frame ({len(frame) - LENGTH.size} bytes after it)"
        )
    header_end = LENGTH.size + length
    try:
        header = frame[LENGTH.size : header_end].decode("utf-8")
    except UnicodeDecodeError:
        raise protocol.ProtocolError("a binary frame's header must be JSON text (UTF-8)") from None
    submit = protocol.parse(header, max_depth) if length else None
    if not isinstance(submit, protocol.Submit):
        raise protocol.ProtocolError('a binary frame carries a submit: its header needs "type": "submit"')
    try:
        arrays = _inputs(submit.data, memoryview(frame)[header_end:])
    except (tensors.TensorError, ValueError) as exc:
        raise protocol.ProtocolError(str(exc), submit.id) from None
    return protocol.Submit(
        submit.id, submit.endpoint, tensors.TensorInput(arrays), submit.progress, len(frame), submit.priority,
        submit.deadline_s,
    )  # fmt: skip


def _inputs(described: Any, raw: memoryview) -> tensors.Arrays:
    if not isinstance(described, list) or not described:
        raise ValueError("a binary submit's data must be [{name, datatype, shape, size}, ...], its inputs in order")
    arrays: tensors.Arrays = {}
    at = 0
    for item in described:
        name, datatype, shape = tensors.described_input(item, "input in 'data'")
        size = item.get("size")
        if type(size) is not int or size < 0:
            raise ValueError(f"input {name!r}: size must be its number of bytes, got {size!r}")
        if at + size > len(raw):
            raise ValueError(f"input {name!r}: size {size} runs past the end of the frame ({len(raw) - at} bytes left)")
        if name in arrays:
            raise ValueError(f"input {name!r} is sent twice")
        arrays[name] = tensors.from_bytes(name, datatype, shape, raw[at : at + size])
        at += size
    if at != len(raw):
        raise ValueError(f"{len(raw) - at} bytes after the inputs that no input's size claims")
    return arrays


def encode_outputs(outputs: tensors.Arrays, *, datatypes: Mapping[str, str]) -> Encoded:
    """A request's outputs as a completed frame carries them (on the worker)."""
    described, chunks = [], []
    for name, array in outputs.items():
        datatype = datatypes[name]
        chunk = tensors.to_bytes(array, datatype)
        described.append(
            f'{{"name":{protocol.encode_id(name)},"datatype":"{datatype}","shape":{list(array.shape)},"size":{len(chunk)}}}'
        )
        chunks.append(chunk)
    return Encoded("[" + ",".join(described) + "]", b"".join(chunks))


def completed(request_id: str | int, encoded: Encoded, timing_json: str) -> bytes:
    """The completed frame of a binary request (on the loop: the header is small)."""
    header = (
        f'{{"type":"completed","id":{protocol.encode_id(request_id)},"outputs":{encoded.outputs_json},'
        f'"timing":{timing_json}}}'
    ).encode()
    return LENGTH.pack(len(header)) + header + encoded.raw
