"""Entrypoints for servd on a Ray cluster (cluster.engine: ray): where a call ran, slow calls,
a constructor that fails, and pure-Python CPU work that holds the GIL."""

from __future__ import annotations

import os
import time
from typing import Any


def _node() -> str | None:
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # noqa: BLE001 - outside Ray there is no node
        return None


def where(data: Any) -> dict[str, Any]:
    """Echoes `data` with the process and Ray node that ran the call."""
    return {"data": data, "pid": os.getpid(), "node": _node()}


def where_batch(items: list[Any]) -> list[dict[str, Any]]:
    """Batched `where`: each input with its call's process, node and batch size; sleeps
    item["s"] (the largest in the batch) first, so a test can keep calls running."""
    longest = max((float(i.get("s", 0)) if isinstance(i, dict) else 0.0) for i in items)
    time.sleep(longest)
    pid, node = os.getpid(), _node()
    return [{"data": item, "pid": pid, "node": node, "batch": len(items)} for item in items]


class CrashesInConstructor:
    """A model whose constructor always raises (a missing weights file, say)."""

    def __init__(self) -> None:
        raise RuntimeError("weights file missing (on purpose)")

    def __call__(self, data: Any) -> Any:
        return data


class Closes:
    """Echoes; its close() leaves a file named after the process, so a test can see it ran."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def __call__(self, data: Any) -> Any:
        return {"data": data, "pid": os.getpid()}

    def close(self) -> None:
        with open(os.path.join(self.directory, f"closed-{os.getpid()}"), "w") as f:
            f.write("closed")


def spin(data: Any) -> int:
    """Pure-Python CPU work holding the GIL: a fixed count of loop steps (`data`, default 800,000:
    about 20 ms on one core of the test machine). Counted, not timed, so two calls sharing a core
    take twice as long."""
    steps = int(data or 800_000) if not isinstance(data, dict) else int(data.get("steps", 800_000))
    total = 0
    for i in range(steps):
        total += i & 7
    return total
