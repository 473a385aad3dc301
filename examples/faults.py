"""Entrypoints that misbehave on purpose, named for what they do; the tests serve them."""

from __future__ import annotations

import threading
import time
from typing import Any


def fail_on_odd(data: Any) -> Any:
    """Raises for odd integers, echoes everything else."""
    if isinstance(data, int) and data % 2:
        raise ValueError(f"odd input {data}")
    return data


def fail_on_odd_batch(items: list[Any]) -> list[Any]:
    """Batched: the whole call raises if any input is an odd integer (servd must isolate it)."""
    for item in items:
        if isinstance(item, int) and item % 2:
            raise ValueError(f"odd input {item}")
    return [{"value": item, "batch": len(items)} for item in items]


def slow_fail_on_odd_batch(items: list[Any]) -> list[Any]:
    """Batched: every call sleeps 0.2 s, then raises if any input is an odd integer (isolation takes
    several calls; each result's timing must be its own call's)."""
    time.sleep(0.2)
    return fail_on_odd_batch(items)


def nested(depth: Any) -> Any:
    """Returns a list nested `depth` levels deep: valid JSON that servd's encoder can't write past
    about 1,000 levels (its result encoding fails, not the entrypoint)."""
    value: list[Any] = []
    for _ in range(int(depth) - 1):
        value = [value]
    return value


def sleep(data: Any) -> Any:
    """Sleeps data["s"] seconds (or data seconds), then returns data."""
    seconds = data.get("s", 0) if isinstance(data, dict) else data
    time.sleep(float(seconds or 0))
    return data


def sleep_batch(items: list[Any]) -> list[Any]:
    """Batched: sleeps the largest requested time once, returns each input with its batch size."""
    longest = max((float(i.get("s", 0)) if isinstance(i, dict) else float(i or 0)) for i in items)
    time.sleep(longest)
    return [{"value": item, "batch": len(items)} for item in items]


def wrong_length(items: list[Any]) -> list[Any]:
    """Batched, but returns one result too few."""
    return list(items)[:-1]


def not_json(data: Any) -> Any:
    """Returns a set, which JSON can't carry."""
    return {1, 2, 3}


def oom_above(limit: int) -> Any:
    """A batched entrypoint that raises torch's CUDA out-of-memory error for batches over `limit`."""

    def call(items: list[Any]) -> list[Any]:
        import torch

        if len(items) > limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (simulated: batch {len(items)} > {limit})")
        return [{"value": item, "batch": len(items)} for item in items]

    return call


oom_above_4 = oom_above(4)


class Counter:
    """Counts its calls per instance; records close(). Shows device placement and lifecycle."""

    closed: list[str] = []
    lock = threading.Lock()

    def __init__(self, device: str = "cpu", start: int = 0) -> None:
        self.device = device
        self.count = start

    def __call__(self, data: Any) -> dict[str, Any]:
        with self.lock:
            self.count += 1
            return {"device": self.device, "count": self.count, "data": data}

    def close(self) -> None:
        Counter.closed.append(self.device)


class FailsToLoad:
    def __init__(self, tag: str = "") -> None:  # takes a tag option (tests swap to it): only its load fails
        raise RuntimeError("weights file missing (on purpose)")

    def __call__(self, data: Any) -> Any:
        return data


broken_calls: list[int] = []


def broken_batch(items: list[Any]) -> list[Any]:
    """Batched, and fails every call the same way, whatever the inputs (a broken model)."""
    broken_calls.append(len(items))
    raise RuntimeError("model weights are corrupt")
