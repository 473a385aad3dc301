"""The smallest entrypoint: returns its input. Measures servd's own overhead."""

from typing import Any


def echo(data: Any) -> Any:
    return data


def echo_batch(items: list[Any]) -> list[Any]:
    """Batched echo: one call takes a list and returns a list of the same length."""
    return list(items)
