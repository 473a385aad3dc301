"""Tensor entrypoints (docs/protocols/v2.md): a dict of name -> array in, arrays out.

`add_sub` is Triton's classic "simple" model, served by the default servd.yaml as `simple`, so
tritonclient's own examples run against servd. The others misbehave on purpose, for the tests.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np


def add_sub(inputs: dict[str, Any]) -> dict[str, Any]:
    """OUTPUT0 = INPUT0 + INPUT1 and OUTPUT1 = INPUT0 - INPUT1, row by row."""
    a, b = inputs["INPUT0"], inputs["INPUT1"]
    return {"OUTPUT0": a + b, "OUTPUT1": a - b}


def identity(inputs: dict[str, Any]) -> dict[str, Any]:
    """Each input back as the output of the same name, with the call's rows counted in `rows`."""
    first = next(iter(inputs.values()))
    return {**inputs, "rows": np.full(len(first), len(first), dtype=np.int64)}


def upper(inputs: dict[str, Any]) -> Any:
    """BYTES in, BYTES out: each element upper-cased (one output, returned as a bare array)."""
    return np.array([bytes(v).upper() for v in inputs["text"].ravel()], dtype=object).reshape(inputs["text"].shape)


def fail_on_negative(inputs: dict[str, Any]) -> Any:
    """Raises if any row's first value is negative (servd must isolate that request); doubles x."""
    x = inputs["x"]
    if (np.asarray(x)[:, 0] < 0).any():
        raise ValueError("a negative first value")
    return x * 2


class OomAboveRows:
    """Raises CUDA's out-of-memory message for calls of more than `limit` rows; doubles x."""

    def __init__(self, limit: int = 4) -> None:
        self.limit = limit
        self.calls: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, inputs: dict[str, Any]) -> Any:
        rows = len(inputs["x"])
        with self.lock:
            self.calls.append(rows)
        if rows > self.limit:
            raise RuntimeError(f"CUDA out of memory. Tried to allocate {rows} rows")
        return inputs["x"] * 2


def wrong_rows(inputs: dict[str, Any]) -> Any:
    """Breaks the contract: one row fewer than it was given."""
    return inputs["x"][1:]


def torch_kind(inputs: dict[str, Any]) -> dict[str, Any]:
    """Says what it was handed (tensors.as): 1 for a torch tensor, 0 for a numpy array; doubles x."""
    x = inputs["x"]
    is_torch = type(x).__module__.startswith("torch")
    return {"y": x * 2, "is_torch": np.full(len(x), int(is_torch), dtype=np.int64)}
