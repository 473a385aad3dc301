"""An endpoint's measurements: a moving average of batch time (for ETA), recent latencies
(for p50/p99) and how its requests ended. Loop thread only; plain values, no I/O."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

EWMA_WEIGHT = 0.2
LATENCY_WINDOW = 1000


@dataclass
class Stats:
    batch_time_s: float | None = None
    completed: int = 0
    failed: int = 0  # every error outcome, cancels and timeouts included
    lined_up: int = 0  # requests lined up behind a running call (endpoint.py), since start
    outcomes: dict[str, int] = field(default_factory=dict)  # error code word -> count
    waits: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    runs: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    totals: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    eta_errors: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))  # |actual - ETA|
    # Running totals since start, for the v2 statistics extension (handlers/v2.py).
    batches: int = 0
    queue_s_total: float = 0.0
    run_s_total: float = 0.0
    last_completed_at: float | None = None  # wall clock (time.time()), None before any

    def record_batch(self, run_s: float) -> None:
        previous = self.batch_time_s
        self.batches += 1
        self.batch_time_s = run_s if previous is None else previous + EWMA_WEIGHT * (run_s - previous)

    def record_completed(self, queue_s: float, run_s: float) -> None:
        self.completed += 1
        self.queue_s_total += queue_s
        self.run_s_total += run_s
        self.last_completed_at = time.time()
        self.waits.append(queue_s)
        self.runs.append(run_s)
        self.totals.append(queue_s + run_s)

    def record_failed(self, outcome: str) -> None:
        self.failed += 1
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


def percentile(values: deque[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def quantiles(values: deque[float]) -> dict[str, float | None]:
    return {"p50": percentile(values, 0.5), "p99": percentile(values, 0.99)}
