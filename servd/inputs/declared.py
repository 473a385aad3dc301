"""Declared tensors: what `tensors:` in servd.yaml says, and requests and results checked against it.

Pure functions and frozen values; no tornado, no torch, no threads of their own. `admit` runs
on the loop when a request arrives (core/endpoint.py): it turns servd's own JSON into arrays
through the codec (inputs/tensors.py) and checks every input's presence, datatype and shape, and
on a batched endpoint the rows. `outputs_of` runs on a worker after the call
(runners/batch_rows.py): the entrypoint's outputs must be what `tensors.outputs` declares.

TensorSpec and TensorsSpec live here, not in config/: they are what inputs are checked against,
and config/spec.py builds them from the file (inputs sits below config in the import order).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from servd.inputs.tensors import DTYPES, Array, Arrays, TensorError, TensorInput, datatype_of, from_nested


@dataclass(frozen=True)
class TensorSpec:
    """One declared tensor: its name, v2 datatype and shape (-1 = any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class TensorsSpec:
    """The endpoint's declared tensors (`admit` and `outputs_of` check against them)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    as_: str = "numpy"  # numpy | torch: what the entrypoint is handed


@dataclass(frozen=True, slots=True)
class Layout:
    """How a batch of one endpoint is called: its declaration, and whether rows are stacked."""

    spec: TensorsSpec
    batched: bool


class OutputMismatch(Exception):
    """The entrypoint's outputs don't match `tensors.outputs` (its contract, not the input's fault)."""


# -- inputs, at admission ------------------------------------------------------------------------


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


# -- outputs, after the call ---------------------------------------------------------------------


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
