"""What a request's end says: the terminal for a call's outcome, a failure's wording, and the
measurements and log line every end leaves.

Loop thread only (called by core.endpoint as a request ends). Pure of any transport: the terminal
is a typed event (core.events) that each transport encodes its own way.
"""

from __future__ import annotations

from time import monotonic
from typing import Any

from servd.core.events import Completed, Failed, Terminal
from servd.core.failures import clip, log_safely, safe_str
from servd.core.request import Request, State
from servd.core.stats import Stats
from servd.errors import ErrorCode
from servd.inputs.validation import InvalidInput
from servd.obs.metrics import EndpointSeries
from servd.runners.seam import BatchContractError, NotEncodable, NotJSON, Outcome


def terminal_for(
    request: Request, outcome: Outcome, run_s: float, size: int, endpoint: str, entrypoint: str, log: Any
) -> Terminal:
    """The terminal a call's outcome gives its request (`run_s`/`size` are the call's, unless
    failure isolation ran this input in a smaller call)."""
    if outcome.error is None:
        assert outcome.data_json is not None
        queue_s = request.started_at - request.admitted_at
        if outcome.batch_size:  # the call that produced it (failure isolation makes smaller ones)
            run_s, size = outcome.run_s, outcome.batch_size
        return Completed(outcome.data_json, queue_s, run_s, size, outcome.payload)
    if isinstance(outcome.error, InvalidInput):
        return Failed(ErrorCode.INVALID_INPUT, str(outcome.error))
    return Failed(ErrorCode.ENDPOINT_FAILED, describe_failure(request, outcome.error, endpoint, entrypoint, log))


def describe_failure(request: Request, exc: BaseException, endpoint: str, entrypoint: str, log: Any) -> str:
    """What the client is told when the entrypoint failed; the log gets the traceback."""
    text = safe_str(exc)
    if isinstance(exc, (BatchContractError, NotJSON)):
        log_safely(log.error, "entrypoint broke its contract", endpoint=endpoint, id=request.id, error=text)
        return text
    if isinstance(exc, NotEncodable):  # servd's limit, not the entrypoint's fault
        log_safely(log.error, "servd could not encode a result", endpoint=endpoint, id=request.id, error=text)
        return f"servd could not encode the result of {entrypoint} as JSON: {text}"
    log_safely(log.error, "entrypoint raised", endpoint=endpoint, id=request.id, exc_info=exc)
    return f"{entrypoint} raised {type(exc).__name__}: {clip(text)}"


def record(
    request: Request, terminal: Terminal, endpoint: str, stats: Stats, metrics: EndpointSeries, log: Any
) -> None:
    """Every end, measured once: the outcome counters, waits and run times, the estimator's error,
    and one "request" log line."""
    metrics.ended(terminal.outcome)
    if isinstance(terminal, Completed):
        stats.record_completed(terminal.queue_s, terminal.run_s)
        metrics.waited(request.priority, terminal.queue_s)
        metrics.run_seconds.observe(terminal.run_s)
        if request.eta_s is not None:  # the estimator, judged: ETA given vs time it took
            error = abs(monotonic() - request.admitted_at - request.eta_s)
            stats.eta_errors.append(error)
            metrics.eta_error.observe(error)
        log.info(
            "request", endpoint=endpoint, id=request.id, outcome="completed",
            queue_s=round(terminal.queue_s, 6), run_s=round(terminal.run_s, 6), batch_size=terminal.batch_size,
        )  # fmt: skip
        return
    stats.record_failed(terminal.outcome)
    now = monotonic()
    started = request.started_at or now
    log.info(
        "request", endpoint=endpoint, id=request.id, outcome=terminal.code.word,
        queue_s=round(started - request.admitted_at, 6),
        run_s=round(now - request.started_at, 6) if request.started_at else None,
        batch_size=None, message=terminal.message,
    )  # fmt: skip


def rerun_or_end(
    requests: list[Request], outcomes: list[Outcome]
) -> tuple[list[Request], list[tuple[Request, Failed]]]:
    """A lost replica's batch: which requests run again (back to the queue, in order, marked as
    rerun once) and which end `unavailable`: one lost a second time, or one that already streamed
    partials (it must not run twice). Requests that already ended are neither."""
    back: list[Request] = []
    lost: list[tuple[Request, Failed]] = []
    for request, outcome in zip(requests, outcomes, strict=True):
        if request.state is State.DONE:
            continue
        streamed = getattr(outcome.error, "streamed", False)
        if request.reruns or streamed:
            why = "after sending partials" if streamed else "a second time"
            lost.append((request, Failed(ErrorCode.UNAVAILABLE, f"the replica running it was lost {why}")))
            continue
        request.reruns += 1
        request.state = State.QUEUED
        back.append(request)
    return back, lost
