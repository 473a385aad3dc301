"""Batching policy as pure functions: run now or wait until when, how many, what ETA.

No clock, no loop, no threads: the endpoint passes the numbers in and arms one timer for a
WaitUntil. That keeps the policy testable on its own and the dispatcher free of polling.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class RunNow:
    count: int


@dataclass(slots=True, frozen=True)
class WaitUntil:
    when: float


def decide(
    waiting: int,
    max_size: int,
    oldest_admitted_at: float,
    max_delay_s: float,
    now: float,
    *,
    run_when_idle: bool = False,
) -> RunNow | WaitUntil | None:
    """What a free worker slot should do with `waiting` queued requests.

    A full batch runs at once; a partial one runs once the oldest request has waited
    `max_delay_s` (Triton's max_queue_delay rule), so a lone request is never held longer.
    `run_when_idle` (batch.wait: when_busy, and nothing of the endpoint running): run what waits
    now; company that isn't coming is not waited for, and under load, when calls run, requests
    still gather into batches while they wait for a slot.
    """
    if waiting <= 0:
        return None
    if waiting >= max_size:
        return RunNow(max_size)
    if run_when_idle:
        return RunNow(waiting)
    release_at = oldest_admitted_at + max_delay_s
    if now >= release_at:
        return RunNow(waiting)
    return WaitUntil(release_at)


def fit_rows(rows: Iterable[int], max_rows: int) -> tuple[int, int, bool]:
    """Stacked tensors: of the queued requests' row counts (in queue order), how many lead the
    queue into one call of at most `max_rows` rows (at least one, even a request larger than an
    OOM-lowered size), their rows, and whether that call is full: the next request won't fit, so
    waiting for company can't grow it. Reads only as far as a call reaches."""
    count = total = 0
    for size in rows:
        if count and total + size > max_rows:
            return count, total, True
        count, total = count + 1, total + size
        if total >= max_rows:
            return count, total, True
    return count, total, False


def lowered_batch_size(current: int, failed_size: int) -> int:
    """After an out-of-memory error in a batch of `failed_size`, the size to use from now on."""
    return max(1, min(current, failed_size // 2))


def eta(rank: int, batch_size: int, slot_remaining_s: list[float], batch_time_s: float | None) -> float | None:
    """Seconds until the request at `rank` (0 = next) completes; None before any batch was timed.

    Requests ahead of it run in batches of `batch_size`, batch j on slot j mod S, after the
    slots' current calls finish (`slot_remaining_s`, sorted ascending, 0 for a free slot).
    """
    if batch_time_s is None or not slot_remaining_s:
        return None
    batch_index = rank // max(1, batch_size)
    slots = len(slot_remaining_s)
    rounds, slot = divmod(batch_index, slots)
    return slot_remaining_s[slot] + (rounds + 1) * batch_time_s
