"""What a client and the log are told when user code fails: short, printable, never raising."""

from __future__ import annotations

from typing import Any

MAX_ERROR_CHARS = 500


def clip(text: str) -> str:
    """Exception messages reach clients: keep them short (the full one is in the log)."""
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "… (truncated; see the log)"


def safe_str(exc: BaseException) -> str:
    """str(exc), even for an exception whose __str__ raises (user code can do anything)."""
    try:
        return str(exc)
    except Exception:  # noqa: BLE001
        return f"<{type(exc).__name__} whose message cannot be printed>"


def log_safely(emit: Any, event: str, **fields: Any) -> None:
    """Log, and if rendering fails (an unprintable exception), log without the traceback."""
    try:
        emit(event, **fields)
    except Exception:  # noqa: BLE001
        exc = fields.pop("exc_info", None)
        emit(event, **fields, exception_type=type(exc).__name__ if exc is not None else None)
