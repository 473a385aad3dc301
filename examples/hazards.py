"""More entrypoints that misbehave on purpose (issue 7, hardening), named for what they do.

examples/faults.py has the everyday faults (raising, sleeping, wrong lengths); these are the
nastier ones a hostile or careless model brings: exceptions that can't be printed, deep
tracebacks, values JSON can't carry, close() that fails, sys.exit() inside a call.
"""

from __future__ import annotations

import sys
from typing import Any


class UnprintableError(Exception):
    """An exception whose str() itself raises (a buggy __str__ in some library's exception)."""

    def __str__(self) -> str:
        raise RuntimeError("this exception cannot be printed")


def raise_unprintable(data: Any) -> Any:
    """Raises UnprintableError for every input."""
    raise UnprintableError()


def raise_deep(data: Any) -> Any:
    """Recurses data["depth"] (default 40) calls deep, then raises: a long traceback."""
    depth = data.get("depth", 40) if isinstance(data, dict) else 40
    return _down(int(depth), data)


def _down(depth: int, data: Any) -> Any:
    if depth <= 0:
        raise ValueError("failed at the bottom of a deep call stack")
    return _down(depth - 1, data)


def returns_nan(data: Any) -> Any:
    """Returns NaN, which strict JSON can't carry."""
    return {"value": float("nan")}


def returns_itself(data: Any) -> Any:
    """Returns a list that contains itself: JSON encoding never ends unless it is caught."""
    loop: list[Any] = [data]
    loop.append(loop)
    return loop


def exits(data: Any) -> Any:
    """Calls sys.exit() inside the call (SystemExit is a BaseException, not an Exception)."""
    sys.exit(3)


class CloseRaises:
    """Echoes its input; its close() raises, as a model whose cleanup fails does."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    def __call__(self, data: Any) -> Any:
        return data

    def close(self) -> None:
        raise RuntimeError("close failed (on purpose)")


class ExitsInInit:
    """Calls sys.exit(0) while loading, as a model that parses sys.argv with argparse may."""

    def __init__(self) -> None:
        sys.exit(0)

    def __call__(self, data: Any) -> Any:
        return data
