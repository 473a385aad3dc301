"""An endpoint's calls, by line: each running call and the short calls lined up behind it.

Loop thread only. On an unbatched endpoint of the thread pool whose recent calls are short, the
next requests can wait behind a running call on its own worker (the runner's `Liner`), so the
worker goes from one call to the next without a round trip through the loop. This module keeps
the lines and the rule for how deep they may be; the endpoint decides what to launch into them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from time import monotonic
from typing import Any

from tornado.ioloop import IOLoop

from servd.core.instances import Instance
from servd.core.request import Request, State
from servd.runners.seam import Job, Liner

LINE_UP_BUDGET_S = 0.001  # predicted run time lined up behind each running call, at most
LINE_UP_MAX_DEPTH = 16  # requests lined up behind one call, at most, however short calls are
LINE_UP_OVERDUE_S = 0.005  # a call running this long takes no more requests behind it (it may hang)
COLLECT_INTERVAL_S = 0.002  # how long a lined-up call's result may wait for the loop to fetch it


@dataclass(slots=True, eq=False)
class Batch:
    """One call's requests, on one instance; `line` is the line it belongs to (itself at its head
    when it holds the thread)."""

    requests: list[Request]
    instance: Instance
    started_at: float
    size: int = 0  # requests, or rows on a stacked tensor endpoint: what batch.max_size counts
    job: Job | None = None
    line: deque[Batch] = field(default_factory=deque)  # this batch and those lined up with it, in order

    def is_wanted(self) -> bool:
        return any(r.state is not State.DONE for r in self.requests)


class Lines:
    """The open lines of one endpoint, and how many requests may wait in each."""

    def __init__(self, liner: Liner | None, loop: IOLoop) -> None:
        self.liner = liner
        self.loop = loop
        self.open: dict[int, deque[Batch]] = {}  # by id: each running call and those behind it
        self.lined = 0  # requests lined up now, behind a running call
        self.depth = 0  # how many may be, behind each (judge_depth)
        self._collect: Any = None

    def calls(self) -> Iterator[Batch]:
        """The batches that hold a thread: running, or next on theirs; not those lined up behind."""
        return (line[0] for line in self.open.values())

    def slot_remaining(self, now: float, expected: float, slots: int) -> list[float]:
        """Seconds until each of `slots` is free, ascending (0 for a free slot), for calls of
        `expected` seconds; a slot with requests lined up is free once they have run too."""
        busy = [
            max(0.0, expected - (now - b.started_at)) + (len(b.line) - 1) * expected
            for b in self.calls()
            if not b.instance.retired
        ]
        return [0.0] * max(0, slots - len(busy)) + sorted(busy)

    def judge_depth(self, expected: float | None, batched: bool) -> None:
        """How many requests may wait behind each running call: LINE_UP_BUDGET_S of calls as long
        as the recent ones, on an unbatched endpoint of a runner that lines up; 0: none. Judged when
        a call is timed or the endpoint retuned, not on every arrival."""
        if self.liner is None or batched or expected is None:
            self.depth = 0
        else:
            self.depth = min(LINE_UP_MAX_DEPTH, int(LINE_UP_BUDGET_S / max(expected, 1e-6)))

    def have_room(self) -> bool:
        return self.lined < self.depth * len(self.open)

    def joinable(self) -> list[deque[Batch]]:
        """Lines a request may join: their call is recent (not slow or hung) on a current model."""
        due = monotonic() - LINE_UP_OVERDUE_S
        return [line for line in self.open.values() if line[0].started_at > due and not line[0].instance.retired]

    def place(self, batch: Batch, line: deque[Batch] | None) -> Job | None:
        """Put a launched batch in `line` (lined up) or in a line of its own; the job it follows, if any."""
        before = line[-1].job if line else None
        if line is None:
            self.open[id(batch.line)] = batch.line
        else:
            batch.line = line
            self.lined += 1
        batch.line.append(batch)
        return before

    def start(self, job: Job, before: Job | None, run: Callable[[Job], None]) -> None:
        """Run `job` after `before` on its thread, or on its own through `run`."""
        if before is not None and self.liner is not None:
            self.liner.run_after(job, before)
            if self._collect is None:
                self._collect = self.loop.call_later(COLLECT_INTERVAL_S, self._collect_results)
        else:
            run(job)

    def leave(self, batch: Batch) -> Batch | None:
        """`batch` returned: the next of its line (if any) now holds the thread, and is returned."""
        line = batch.line
        line.remove(batch)
        if not line:
            del self.open[id(line)]
            return None
        self.lined -= 1  # the next one holds the thread now (or a lined-up one left)
        return line[0]

    def _collect_results(self) -> None:
        """Results of lined-up calls come back without waking the loop, the last of a line
        excepted: fetch them at least every COLLECT_INTERVAL_S, in case that one is slow."""
        self._collect = None
        assert self.liner is not None  # armed only where lines are formed
        self.liner.collect()
        if self._collect is None and any(len(line) > 1 for line in self.open.values()):
            self._collect = self.loop.call_later(COLLECT_INTERVAL_S, self._collect_results)
