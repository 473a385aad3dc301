"""What `servd tune` reasons with: settings, what a load level measured, the goal, the limits.

Plain frozen values (a `Tried` collects one setting's points as the search goes); no I/O.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

KNOBS = ("max_size", "instances", "concurrency", "max_delay_ms")


@dataclass(frozen=True)
class Setting:
    """The values tuned: those of one endpoint in servd.yaml (max_size None: not batched)."""

    concurrency: int
    max_size: int | None = None
    max_delay_ms: float | None = None
    instances: int = 1

    @property
    def capacity(self) -> int:
        """Requests that can be in calls at once."""
        return self.concurrency * self.instances * (self.max_size or 1)

    def with_(self, **changes: int | float) -> Setting:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Measure:
    """What one load level saw: at the client (throughput, latency, errors) and in servd."""

    throughput: float  # completed requests per second
    p50_s: float | None
    p99_s: float | None
    completed: int
    errors: Mapping[str, int] = field(default_factory=dict)
    mean_batch: float | None = None  # requests per call
    run_p50_s: float | None = None  # one call's duration, as servd timed it
    wait_p50_s: float | None = None  # queue wait, as servd timed it
    working_batch: int | None = None  # /v1/endpoints stats.batch_size after the level

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass(frozen=True)
class Trial:
    setting: Setting
    clients: int
    phase: str  # start, max_size, instances, concurrency, max_delay_ms, refine, recheck, confirm


@dataclass(frozen=True)
class Point:
    index: int
    trial: Trial
    measure: Measure
    oom: bool  # the working batch size fell below max_size during this level

    @property
    def setting(self) -> Setting:
        return self.trial.setting


@dataclass(frozen=True)
class Goal:
    p99_s: float | None = None  # None: the most throughput, whatever the latency

    def meets(self, point: Point) -> bool:
        m = point.measure
        if point.oom or m.completed == 0 or m.error_count:
            return False
        return self.p99_s is None or (m.p99_s is not None and m.p99_s <= self.p99_s)

    def score(self, point: Point) -> tuple[int, float]:
        """Higher is better: points meeting the goal by throughput, the others by how near they came."""
        if self.meets(point):
            return (2, point.measure.throughput)
        if point.oom or point.measure.completed == 0 or point.measure.error_count:
            return (0, point.measure.throughput)
        return (1, -(point.measure.p99_s or math.inf))


@dataclass(frozen=True)
class Limits:
    max_batch: int = 256
    max_concurrency: int = 64
    max_threads: int = 40  # server.max_threads: concurrency x instances must fit
    max_instances: int = 1  # the length of the `device` list
    clients: tuple[int, ...] = ()  # fixed load levels; () = rise until throughput stops growing
    max_clients: int = 256
    max_points: int = 48
    knobs: frozenset[str] = frozenset(KNOBS)
    delay_when_idle: bool = False  # batch.wait: always (a partial batch waits even with nothing running)


@dataclass
class Tried:
    """One setting and the levels it was measured at."""

    setting: Setting
    points: list[Point] = field(default_factory=list)

    @property
    def oom(self) -> bool:
        return any(p.oom for p in self.points)

    def best(self, goal: Goal) -> Point:
        """The best load level; once the setting was measured again (a recheck, at its best level
        then), that measurement: the older ones were taken when the machine ran at another speed."""
        rechecks = [p for p in self.points if p.trial.phase == "recheck"]
        return rechecks[-1] if rechecks else max(self.points, key=goal.score)

    def loaded(self) -> Point:
        """The level with the most clients that ran cleanly: where queues and batches were fullest."""
        clean = [p for p in self.points if p.measure.completed and not p.measure.error_count and not p.oom]
        return max(clean or self.points, key=lambda p: p.trial.clients)
