"""Entrypoints that report what servd did to them, named for what they show; the tests serve them.

This module imports torch at the top, so servd counts its endpoints as torch endpoints (inference
mode, `server.torch_threads`). Class-level state (`made`, `gate`) is read and reset by the tests,
which run the daemon in the same process.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Any

import torch

GATE_TIMEOUT_S = 30.0  # a gated call never hangs a test run for longer than this


def inference_mode_enabled(data: Any) -> bool:
    """Whether the call runs under torch.inference_mode()."""
    return torch.is_inference_mode_enabled()


def torch_num_threads(data: Any) -> int:
    """torch's intra-op thread count as the worker thread running the call sees it."""
    return torch.get_num_threads()


def steps_batch(items: list[Any]) -> Iterator[list[str]]:
    """Batched generator: three steps, each a list with one partial ("<input>:<step>") per input."""
    for step in range(3):
        yield [f"{item}:{step}" for item in items]


class RecordsInit:
    """Records the keyword arguments of each construction; calls return data times `scale`."""

    made: list[dict[str, Any]] = []

    def __init__(self, device: str, scale: int = 1) -> None:
        RecordsInit.made.append({"device": device, "scale": scale})
        self.scale = scale

    def __call__(self, data: Any) -> Any:
        return data * self.scale


class RecordsInitWithoutDevice:
    """Like RecordsInit, but its __init__ takes no `device`, so servd must not pass one."""

    made: list[dict[str, Any]] = []

    def __init__(self, scale: int = 1) -> None:
        RecordsInitWithoutDevice.made.append({"scale": scale})
        self.scale = scale

    def __call__(self, data: Any) -> Any:
        return data * self.scale


class GatedCounter:
    """Counts its calls per instance, but each call first waits until the test opens `gate`.

    While the gate is closed every started call holds its worker slot, so a test can see
    exactly how many calls run at once and on which instances.
    """

    gate = threading.Event()

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self, data: Any) -> dict[str, Any]:
        if not GatedCounter.gate.wait(GATE_TIMEOUT_S):
            raise TimeoutError(f"the test never opened the gate ({GATE_TIMEOUT_S} s)")
        with self.lock:
            self.count += 1
            return {"device": self.device, "count": self.count, "data": data}


class Tracked:
    """Weakly records each instance's payload in `alive`, so a test can see when a removed model is freed."""

    alive: list[weakref.ref[Any]] = []

    def __init__(self, device: str = "cpu") -> None:
        self.payload = _Payload()
        Tracked.alive.append(weakref.ref(self.payload))

    def __call__(self, data: Any) -> Any:
        return data


class _Payload:
    """Stands for a model's weights."""
