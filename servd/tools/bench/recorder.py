"""What the measured requests got, and the JSON-ready summary of a level built from it.

The summary is the one shape everything reads: `--json` prints it, `report` renders it, and
`servd tune` takes its measurements from it. Loop thread only (the bench's asyncio loop).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Recorder:
    """What the measured requests (sent after the warm-up) got."""

    totals: list[float] = field(default_factory=list)
    queues: list[float] = field(default_factory=list)
    runs: list[float] = field(default_factory=list)
    batches: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    last_end: float = 0.0
    by_priority: dict[int, Recorder] = field(default_factory=dict)  # only when priorities are sent

    def count_sent(self, priority: int | None = None) -> None:
        self.sent += 1
        if priority is not None:
            self.by_priority.setdefault(priority, Recorder()).sent += 1

    def record(
        self, code: str, timing: dict[str, Any] | None, sent_at: float, ended_at: float, priority: int | None = None
    ) -> None:
        if priority is not None:
            self.by_priority.setdefault(priority, Recorder()).record(code, timing, sent_at, ended_at)
        self.last_end = max(self.last_end, ended_at)
        if code != "completed":
            self.errors[code] += 1
            return
        self.totals.append(ended_at - sent_at)
        if timing:
            self.queues.append(float(timing.get("queue_s", 0.0)))
            self.runs.append(float(timing.get("run_s", 0.0)))
            self.batches[int(timing.get("batch_size", 1))] += 1


def summarize(rec: Recorder, clients: int, measure_from: float, lost: int, split: bool) -> dict[str, Any]:
    """A level's JSON-ready summary; with `split` (the run sent priorities) also `by_priority`,
    where level "0" is the endpoint's default."""
    elapsed = max(rec.last_end - measure_from, 0.0)
    completed = len(rec.totals)
    summary = {
        "clients": clients,
        "sent": rec.sent,
        "completed": completed,
        "errors": dict(sorted(rec.errors.items())),
        "lost": lost,
        "elapsed_s": round(elapsed, 4),
        "throughput_rps": round(completed / elapsed, 2) if elapsed > 0 else 0.0,
        "latency_s": _latencies(rec),
        "batch_sizes": {str(size): count for size, count in sorted(rec.batches.items())},
    }
    if split:
        summary["by_priority"] = {
            str(priority): {
                "sent": part.sent,
                "completed": len(part.totals),
                "errors": dict(sorted(part.errors.items())),
                "latency_s": _latencies(part),
            }
            for priority, part in sorted(rec.by_priority.items())
        }
    return summary


def _percentiles(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)

    def at(q: float) -> float | None:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 6) if ordered else None

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": at(1.0)}


def _latencies(rec: Recorder) -> dict[str, dict[str, float | None]]:
    return {"total": _percentiles(rec.totals), "queue": _percentiles(rec.queues), "run": _percentiles(rec.runs)}
