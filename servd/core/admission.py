"""Admission rules as pure functions: a request's priority level, its deadline, whether it is doomed.

No clock and no loop: the endpoint passes the numbers in (as batching.py's callers do), so each
rule is tested as a plain function. The endpoint applies them in this order: level (a bad one is
`bad_request`), room (`queue.py`), deadline, then, under `queue.admit: predicted`, the ETA the
request would get at the rank it would really have.
"""

from __future__ import annotations

from servd.config.spec import QueueSpec
from servd.errors import ErrorCode, ServdError


def level_for(asked: int, token_highest: int, limits: QueueSpec, endpoint: str) -> int:
    """The level a request waits at: what it asked for (0 = the default), within what its token
    allows. Asking above the token's level is refused, not lowered quietly (the client should
    know its place); asking for nothing gets the default or the token's highest, the lower one."""
    levels = limits.priority_levels
    highest = min(token_highest, levels)
    if asked > levels:
        raise ServdError(
            ErrorCode.BAD_REQUEST,
            f"priority {asked} is not a level of endpoint {endpoint!r}: queue.priority_levels={levels} "
            "(1 is the highest, 0 = the default)",
        )
    if asked == 0:
        return max(limits.default_level, highest)
    if asked < highest:
        raise ServdError(
            ErrorCode.BAD_REQUEST, f"priority {asked} is above what this token may use: its highest level is {highest}"
        )
    return asked


def deadline(limits: QueueSpec, deadline_s: float | None, now: float) -> float | None:
    """The earlier of queue.timeout_s and the request's own deadline_s after `now`; None if neither."""
    timeout = limits.timeout_s
    if deadline_s is None:
        return None if timeout is None else now + timeout
    return now + (deadline_s if timeout is None else min(timeout, deadline_s))


def deadline_setting(deadline_s: float | None, allowed_s: float) -> str:
    """Which setting a deadline of `allowed_s` after admission came from, as a timeout message
    names it: from the request and its admission, not from a spec a reload may since have changed."""
    if deadline_s is not None and deadline_s <= allowed_s + 1e-3:  # loop times are epoch-sized floats
        return f"deadline_s={deadline_s:g}"
    return f"queue.timeout_s={allowed_s:g}"


def doomed(eta_s: float | None, rank: int, now: float, due: float | None) -> ServdError | None:
    """`queue_full` for a request predicted to finish after `due`; None when it may make it (or
    there is no deadline, or no measured batch time to predict from yet)."""
    if due is None or eta_s is None or now + eta_s <= due:
        return None
    return ServdError(
        ErrorCode.QUEUE_FULL,
        f"predicted to finish in {eta_s:.3f} s (rank {rank}), past its deadline in {due - now:.3f} s; "
        "queue.admit=predicted refuses what can't finish in time: retry later",
    )
