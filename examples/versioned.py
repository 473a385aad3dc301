"""Entrypoints whose version a client can see, for the live-reload tests and benchmark.

`Tagged(tag)` answers every call with its tag, so a client sees which model served it after an
`options` change; it records each construction and `close()`, so a test can check that a
retired model is closed, and closed only after its running calls finished. A call (or a
batch) whose data names a `gate` blocks until the test opens that gate, which holds a call
"running" for as long as a test needs without guessing at sleep times.

Class-level state is read by tests that run the daemon in the same process; every gate and
tag a test uses is unique to it, so tests don't see each other's state.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

GATE_TIMEOUT_S = 30.0  # a gated call never holds a worker (or a test run) longer than this

_gates: dict[str, threading.Event] = {}
_gates_lock = threading.Lock()


def _gate(name: str) -> threading.Event:
    with _gates_lock:
        return _gates.setdefault(name, threading.Event())


def open_gate(name: str) -> None:
    """Let every call waiting on gate `name` (and every later one) go on."""
    _gate(name).set()


def _hold(data: Any) -> None:
    """Block on data["gate"], then sleep data["s"] seconds, when the data asks for either."""
    if not isinstance(data, dict):
        return
    if "gate" in data:
        _gate(str(data["gate"])).wait(GATE_TIMEOUT_S)
    if "s" in data:
        time.sleep(float(data["s"]))


def gated(data: Any) -> Any:
    """Waits for its gate (if the data names one), then returns the data."""
    _hold(data)
    return data


def gated_batch(items: list[Any]) -> list[Any]:
    """Batched: waits for every gate its inputs name, then returns each input with the batch size."""
    for item in items:
        _hold(item)
    return [{"value": item, "batch": len(items)} for item in items]


class Tagged:
    """Returns {"tag", "data"}; `load_s` makes construction take that long (a model loading weights).

    `events` records ("made", tag), ("called", tag) at the end of each call and ("closed", tag),
    in the order they happened.
    """

    events: list[tuple[str, str]] = []
    lock = threading.Lock()

    def __init__(self, tag: str = "v1", load_s: float = 0.0) -> None:
        if load_s:
            time.sleep(load_s)
        self.tag = tag
        self._record("made")

    def __call__(self, data: Any) -> dict[str, Any]:
        _hold(data)
        self._record("called")
        return {"tag": self.tag, "data": data}

    def close(self) -> None:
        self._record("closed")

    def _record(self, what: str) -> None:
        with Tagged.lock:
            Tagged.events.append((what, self.tag))

    @classmethod
    def seen(cls, what: str, tag: str) -> int:
        """How many times `what` ("made", "called", "closed") happened to instances tagged `tag`."""
        with cls.lock:
            return sum(1 for event in cls.events if event == (what, tag))


class Numbered:
    """Numbers its calls 1, 2, ... in the order they begin, then waits for the data's gate (if it names
    one) and returns {"call", "data"}: with concurrency 1 a test reads from the results the order
    servd ran requests in, without timing anything."""

    def __init__(self) -> None:
        self._calls = itertools.count(1)
        self._lock = threading.Lock()

    def _next(self) -> int:
        with self._lock:
            return next(self._calls)

    def __call__(self, data: Any) -> dict[str, Any]:
        call = self._next()
        _hold(data)
        return {"call": call, "data": data}


class NumberedBatch(Numbered):
    """Batched `Numbered`: one number a call, so requests that share a number ran in one batch."""

    def __call__(self, items: list[Any]) -> list[dict[str, Any]]:  # type: ignore[override]
        call = self._next()
        for item in items:
            _hold(item)
        return [{"call": call, "value": item, "batch": len(items)} for item in items]
