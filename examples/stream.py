"""A streaming (generator) entrypoint: each yielded value reaches the client as a `partial`."""

import time
from collections.abc import Iterator
from typing import Any


def words(data: Any) -> Iterator[str]:
    """Yields the text so far, word by word, like a language model printing tokens.

    data: {"text": "...", "delay_s": 0.05} or a plain string.
    """
    text = data.get("text", "") if isinstance(data, dict) else str(data)
    delay = float(data.get("delay_s", 0.05)) if isinstance(data, dict) else 0.05
    so_far: list[str] = []
    for word in text.split():
        time.sleep(delay)
        so_far.append(word)
        yield " ".join(so_far)
