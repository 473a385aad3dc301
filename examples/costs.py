"""Entrypoints whose cost is known, for `servd tune`'s tests: the best setting can be worked out.

`Device` is a batched model on one simulated accelerator: a call of n inputs holds the device
for `fixed_ms + per_item_ms * n` (sleeping, so the GIL is free), one call at a time per
instance, like a GPU running one kernel stream. So throughput is n / (fixed + per_item * n):
larger batches pay the fixed cost less often, more concurrency only queues at the device, and
a batch above `memory_items` raises the error servd takes for out-of-memory (a RuntimeError
saying "out of memory", as torch's CUDA allocator does) without needing torch.
"""

from __future__ import annotations

import threading
import time
from typing import Any


class Device:
    def __init__(self, fixed_ms: float = 20.0, per_item_ms: float = 1.0, memory_items: int | None = None) -> None:
        self.fixed_s = fixed_ms / 1e3
        self.per_item_s = per_item_ms / 1e3
        self.memory_items = memory_items
        self.busy = threading.Lock()  # one call on the device at a time

    def __call__(self, items: list[Any]) -> list[Any]:
        if self.memory_items is not None and len(items) > self.memory_items:
            raise RuntimeError(f"CUDA out of memory (simulated: a batch of {len(items)} > {self.memory_items} items)")
        with self.busy:
            time.sleep(self.fixed_s + self.per_item_s * len(items))
        return [{"value": item, "batch": len(items)} for item in items]


def always_fails(items: list[Any]) -> list[Any]:
    """Batched, and every call raises: an endpoint the tuner must refuse to tune."""
    raise ValueError("this model always fails (on purpose)")
