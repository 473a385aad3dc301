"""What one `servd bench` run is asked to do, and how each request's priority level is drawn.

Plain values, built once by `command.options_from` (or by `servd tune`) and read by everything else.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from servd.client.aio import scheduling_fields


@dataclass(frozen=True)
class Options:
    url: str
    endpoint: str
    clients: tuple[int, ...] = (1,)
    duration_s: float = 10.0
    requests: int = 100_000
    data_json: str = "null"
    transport: str = "ws"
    warmup_s: float = 1.0
    token: str | None = None
    drain_s: float = 30.0
    connect_timeout_s: float = 10.0
    progress: bool = False
    priorities: tuple[tuple[int, float], ...] = ()  # (level, weight); () sends no priority
    deadline_s: float | None = None
    arrays: dict[str, Any] | None = field(default=None, compare=False)  # a tensor workload (--data-file x.npy)

    @property
    def title(self) -> str:
        return f"servd bench {self.url} endpoint={self.endpoint} transport={self.transport}"

    def fields(self) -> dict[int | None, str]:
        """Each level's scheduling members as JSON text (None: no priority sent)."""
        levels: list[int | None] = [level for level, _ in self.priorities] or [None]
        return {level: scheduling_fields(level, self.deadline_s) for level in levels}


class Picker:
    """Each request's level: the one given, or drawn with the mix's weights (seeded per client)."""

    def __init__(self, priorities: tuple[tuple[int, float], ...], seed: int) -> None:
        self.levels: list[int | None] = [level for level, _ in priorities] or [None]
        self.weights = [weight for _, weight in priorities] or [1.0]
        self.rng = random.Random(seed)

    def next(self) -> int | None:
        if len(self.levels) == 1:
            return self.levels[0]
        return self.rng.choices(self.levels, self.weights)[0]
