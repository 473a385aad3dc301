"""The Open Inference Protocol (KServe v2) over HTTP, as bytes in and bytes out. Pure.

Parses an infer request (its JSON, and with the binary tensor data extension the raw tensors
after it: `Inference-Header-Content-Length` says where the JSON ends) into arrays, and builds
the answers: infer responses (outputs as JSON or binary, as asked), server and model metadata,
model configuration and statistics. Every problem with a request is a V2Error whose message
names the tensor or field and what was expected; nothing here allocates more than the body
already holds before the sizes are checked. handlers/v2.py does the HTTP and the queue.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from servd.config.spec import EndpointSpec
from servd.core.stats import Stats
from servd.inputs import tensors
from servd.inputs.declared import TensorSpec
from servd.protocols import ws_messages as protocol

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ("binary_tensor_data", "statistics", "model_configuration", "parameters")
VERSION = "1"  # an endpoint is one model version; a reload replaces it in place
JSON_TENSOR = "data"  # an endpoint without tensors: one BYTES element of JSON text in and out
RESERVED_PARAMETERS = ("priority", "timeout", "binary_data_output")
MAX_HEADER_LENGTH_DIGITS = 18  # more is past any body servd takes (and int() refuses 4,300+ digits)
MAX_TIMEOUT_US = 2**53  # about 285 years: anything longer is no deadline, and stays exact as a float


class V2Error(ValueError):
    """A request the protocol can't serve: 400 with {"error": message}."""


@dataclass(frozen=True, slots=True)
class WantedOutput:
    name: str
    binary: bool | None  # None: the request's binary_data_output decides


@dataclass(slots=True)
class InferRequest:
    id: str | None
    inputs: tensors.Arrays
    outputs: list[WantedOutput] | None  # None = every output
    binary_output: bool = False
    priority: int = 0
    timeout_s: float | None = None
    parameters: dict[str, Any] = field(default_factory=dict)  # the caller's own, echoed back


@dataclass(frozen=True, slots=True)
class Encoded:
    """An infer response: JSON, then (when some output is binary) the raw outputs after it."""

    body: bytes
    header_length: int | None  # the JSON's length when binary data follows it

    @property
    def content_type(self) -> str:
        return "application/json" if self.header_length is None else "application/octet-stream"


# -- requests ----------------------------------------------------------------------------------


def parse_infer(body: bytes | bytearray, header_length: str | None) -> InferRequest:
    """An infer request's body (and its Inference-Header-Content-Length, if sent)."""
    size = len(body)
    json_end = size if header_length is None else _header_length(header_length, size)
    view = memoryview(body)
    try:
        header = protocol.loads(bytes(view[:json_end]) or b"null")
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise V2Error(f"the request's JSON is not valid: {exc}") from None
    if not isinstance(header, dict):
        raise V2Error('the request must be a JSON object {"inputs": [...]}')
    request = InferRequest(_id(header), {}, _wanted(header.get("outputs")))
    _read_parameters(header.get("parameters"), request)
    request.inputs = _inputs(header.get("inputs"), view[json_end:])
    return request


def _header_length(value: str, size: int) -> int:
    """The header's value: ASCII digits only (`isdigit()` also takes '²' and other scripts' digits,
    which int() then refuses), and few enough of them to be a length at all."""
    digits = value.strip()
    if not (digits.isascii() and digits.isdigit() and len(digits) <= MAX_HEADER_LENGTH_DIGITS):
        raise V2Error(f"{HEADER_LENGTH} must be a number of bytes (ASCII digits), got {value[:40]!r}")
    length = int(digits)
    if length > size:
        raise V2Error(f"{HEADER_LENGTH} is {length}, past the end of the body ({size} bytes)")
    return length


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _id(header: dict[str, Any]) -> str | None:
    value = header.get("id")
    if value is not None and not isinstance(value, str):
        raise V2Error(f"'id' must be a string, got {type(value).__name__}")
    return value


def _wanted(outputs: Any) -> list[WantedOutput] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise V2Error("'outputs' must be a list of {name, parameters}")
    wanted = []
    for item in outputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise V2Error("each of 'outputs' must be an object with a 'name'")
        binary = _parameters(item.get("parameters"), f"output {item['name']!r}").get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise V2Error(f"output {item['name']!r}: parameters.binary_data must be true or false")
        wanted.append(WantedOutput(item["name"], binary))
    return wanted


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise V2Error(f"{where}: 'parameters' must be an object")
    return value


def _read_parameters(value: Any, request: InferRequest) -> None:
    """priority (0 = the default level) and timeout (microseconds) map onto servd's priority and
    deadline; binary_data_output asks for binary outputs; the rest are the caller's, echoed."""
    parameters = _parameters(value, "the request")
    priority = parameters.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
        raise V2Error(f"parameters.priority must be an integer >= 0 (0 = the default level), got {_shown(priority)}")
    timeout = parameters.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int) or not 0 <= timeout <= MAX_TIMEOUT_US
    ):
        raise V2Error(f"parameters.timeout must be microseconds (an integer from 0 to 2**53), got {_shown(timeout)}")
    binary = parameters.get("binary_data_output", False)
    if not isinstance(binary, bool):
        raise V2Error("parameters.binary_data_output must be true or false")
    request.priority, request.binary_output = priority, binary
    request.timeout_s = timeout / 1e6 if timeout else None
    if parameters:
        request.parameters = {k: v for k, v in parameters.items() if k not in RESERVED_PARAMETERS}


def _inputs(items: Any, binary: memoryview) -> tensors.Arrays:
    if not isinstance(items, list) or not items:
        raise V2Error("'inputs' must be a non-empty list of {name, datatype, shape, data}")
    arrays: tensors.Arrays = {}
    at = 0
    for item in items:
        name, datatype, shape = _declared(item)
        if name in arrays:
            raise V2Error(f"input {name!r} is sent twice")
        size = _parameters(item.get("parameters"), f"input {name!r}").get("binary_data_size")
        try:
            if size is not None:
                if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                    raise V2Error(f"input {name!r}: binary_data_size must be a number of bytes, got {_shown(size)}")
                if at + size > len(binary):
                    raise V2Error(
                        f"input {name!r}: binary_data_size {size} runs past the end of the body "
                        f"({len(binary) - at} bytes of binary data left); the binary section is truncated"
                    )
                arrays[name] = tensors.from_bytes(name, datatype, shape, binary[at : at + size])
                at += size
            elif "data" in item:
                arrays[name] = tensors.from_json(name, datatype, shape, item["data"])
            else:
                raise V2Error(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
        except tensors.TensorError as exc:
            raise V2Error(str(exc)) from None
    if at != len(binary):
        raise V2Error(
            f"{len(binary) - at} bytes of binary data after the inputs that no input's binary_data_size claims"
        )
    return arrays


def _declared(item: Any) -> tuple[str, str, tuple[int, ...]]:
    try:
        return tensors.described_input(item, "of 'inputs'")
    except tensors.TensorError as exc:
        raise V2Error(str(exc)) from None


def check_outputs(wanted: list[WantedOutput] | None, declared: list[str]) -> None:
    """Outputs asked for must be outputs of the model; each at most once."""
    names = [w.name for w in wanted or []]
    for name in names:
        if name not in declared:
            raise V2Error(f"unknown output {name!r}; the model's outputs are {', '.join(declared)}")
    if len(set(names)) != len(names):
        raise V2Error("an output is asked for twice")


def json_data(request: InferRequest, max_depth: int) -> Any:
    """An endpoint without tensors: its one BYTES input `data` holds the request's JSON data."""
    array = request.inputs.get(JSON_TENSOR)
    if len(request.inputs) != 1 or array is None or array.dtype != object or array.size != 1:
        raise V2Error(
            f"this model takes JSON: send one BYTES input {JSON_TENSOR!r} of shape [1] holding the JSON text "
            "(declare tensors: in servd.yaml to send tensors)"
        )
    raw = bytes(array.ravel()[0])
    try:
        data = protocol.loads(raw)
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise V2Error(f"input {JSON_TENSOR!r} is not valid JSON: {exc}") from None
    too_deep = protocol.depth_problem(data, raw, max_depth)
    if too_deep is not None:
        raise V2Error(too_deep)
    return data


# -- responses ---------------------------------------------------------------------------------


def infer_response(
    outputs: tensors.Arrays,
    *,
    model: str,
    request: InferRequest,
    datatypes: Mapping[str, str],
) -> Encoded:
    """The response to `request`: the outputs it asked for (all by default), each as JSON data or,
    when asked (per output, or binary_data_output for all), as binary data after the JSON."""
    wanted = request.outputs or [WantedOutput(name, None) for name in outputs]
    described: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for want in wanted:
        array, datatype = outputs[want.name], datatypes[want.name]
        entry: dict[str, Any] = {"name": want.name, "datatype": datatype, "shape": list(array.shape)}
        if request.binary_output if want.binary is None else want.binary:
            chunk = tensors.to_bytes(array, datatype)
            entry["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            entry["data"] = tensors.to_list(array, datatype)
        described.append(entry)
    head: dict[str, Any] = {"model_name": model, "model_version": VERSION}
    if request.id is not None:
        head["id"] = request.id
    if request.parameters:
        head["parameters"] = request.parameters
    head["outputs"] = described
    header = orjson.dumps(head)
    if not chunks:
        return Encoded(header, None)
    return Encoded(b"".join([header, *chunks]), len(header))


def json_response(data_json: str, *, model: str, request: InferRequest) -> Encoded:
    """An endpoint without tensors: its JSON result as the one BYTES output `data`."""
    array = np.empty(1, dtype=object)
    array[0] = data_json.encode()
    return infer_response({JSON_TENSOR: array}, model=model, request=request, datatypes={JSON_TENSOR: "BYTES"})


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def server_metadata(version: str) -> dict[str, Any]:
    return {"name": "servd", "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(spec: EndpointSpec) -> dict[str, Any]:
    inputs, outputs = _tensors_of(spec)
    return {
        "name": spec.name,
        "versions": [VERSION],
        "platform": "servd",
        "inputs": [_metadata(t) for t in inputs],
        "outputs": [_metadata(t) for t in outputs],
    }


def _tensors_of(spec: EndpointSpec) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    if spec.tensors is not None:
        return spec.tensors.inputs, spec.tensors.outputs
    json_tensor = (TensorSpec(JSON_TENSOR, "BYTES", (1,)),)
    return json_tensor, json_tensor


def _metadata(tensor: TensorSpec) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}


def model_config(spec: EndpointSpec, devices: list[str]) -> dict[str, Any]:
    """The endpoint in the shape of Triton's model configuration (dims without the batch
    dimension when max_batch_size > 0, as Triton writes them); servd.yaml stays the source."""
    inputs, outputs = _tensors_of(spec)
    batched = spec.batch is not None and spec.tensors is not None
    config: dict[str, Any] = {
        "name": spec.name,
        "platform": "servd",
        "backend": "python",
        "max_batch_size": spec.batch.max_size if batched and spec.batch else 0,
        "input": [_config_tensor(t, batched) for t in inputs],
        "output": [_config_tensor(t, batched) for t in outputs],
        "instance_group": [
            {"count": spec.concurrency, "kind": "KIND_CPU" if device == "cpu" else "KIND_GPU", "device": device}
            for device in devices
        ],
        "parameters": {"entrypoint": {"string_value": spec.entrypoint}},
    }
    if spec.batch is not None:
        queue = spec.queue
        config["dynamic_batching"] = {
            "max_queue_delay_microseconds": int(spec.batch.max_delay_ms * 1000),
            "priority_levels": queue.priority_levels,
            "default_priority_level": queue.default_level,
            "default_queue_policy": {
                "default_timeout_microseconds": int((queue.timeout_s or 0) * 1e6),
                "max_queue_size": queue.max_size or 0,
            },
        }
    return config


def _config_tensor(tensor: TensorSpec, batched: bool) -> dict[str, Any]:
    dims = list(tensor.shape[1:] if batched else tensor.shape)
    return {"name": tensor.name, "data_type": f"TYPE_{'STRING' if tensor.datatype == 'BYTES' else tensor.datatype}",
            "dims": dims}  # fmt: skip


def model_statistics(name: str, stats: Stats) -> dict[str, Any]:
    """One model's counts and times (nanoseconds), from what servd measures: queue time and run
    time per completed request; failures are counted, their time is not."""
    last = stats.last_completed_at
    return {
        "name": name,
        "version": VERSION,
        "last_inference": 0 if last is None else math.floor(last * 1000),
        "inference_count": stats.completed,
        "execution_count": stats.batches,
        "inference_stats": {
            "success": _count(stats.completed, stats.queue_s_total + stats.run_s_total),
            "fail": _count(stats.failed, 0.0),
            "queue": _count(stats.completed, stats.queue_s_total),
            "compute_input": _count(0, 0.0),
            "compute_infer": _count(stats.completed, stats.run_s_total),
            "compute_output": _count(0, 0.0),
            "cache_hit": _count(0, 0.0),
            "cache_miss": _count(0, 0.0),
        },
        "batch_stats": [],
    }


def _count(count: int, seconds: float) -> dict[str, int]:
    return {"count": count, "ns": int(seconds * 1e9)}
