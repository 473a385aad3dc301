"""A running endpoint: its spec, queue, model instances, dispatch and stats.

Loop thread only. Dispatch is event-driven: `_pump` runs when a request arrives, a batch ends,
a slot opens or the batch-delay timer fires, and never otherwise. Every way a request can end
(result, failure, cancel, timeout, drain) goes through `finish`, so the terminal-message count,
the metrics and the request log line stay in step.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from tornado.ioloop import IOLoop

from servd import batching, protocol
from servd.entrypoints import Model
from servd.errors import ErrorCode, ServdError
from servd.metrics import EndpointSeries
from servd.queue import RequestQueue
from servd.request import Completed, Failed, Request, State, Terminal
from servd.spec import EndpointSpec
from servd.workers import BatchContractError, BatchResult, CancelledBeforeStart, Job, NotJSON, Outcome, Runner

ESTIMATION_INTERVAL_S = 0.25  # at most 4 estimation messages a second per request
EWMA_WEIGHT = 0.2
LATENCY_WINDOW = 1000


@dataclass(eq=False)
class Instance:
    """One model on one device, with its own `concurrency` slots."""

    model: Model
    running: int = 0
    retired: bool = False


@dataclass(slots=True, eq=False)
class Batch:
    requests: list[Request]
    instance: Instance
    started_at: float
    job: Job | None = None

    def is_wanted(self) -> bool:
        return any(r.state is not State.DONE for r in self.requests)


@dataclass
class Stats:
    """Moving average of batch time (for ETA) and a window of recent latencies (for p50/p99)."""

    batch_time_s: float | None = None
    completed: int = 0
    failed: int = 0
    waits: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    runs: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    totals: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def record_batch(self, run_s: float) -> None:
        previous = self.batch_time_s
        self.batch_time_s = run_s if previous is None else previous + EWMA_WEIGHT * (run_s - previous)

    def record_request(self, queue_s: float, run_s: float) -> None:
        self.waits.append(queue_s)
        self.runs.append(run_s)
        self.totals.append(queue_s + run_s)


def percentile(values: deque[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Endpoint:
    def __init__(self, spec: EndpointSpec, runner: Runner, metrics: EndpointSeries, log: Any, loop: IOLoop) -> None:
        self.spec = spec
        self.runner = runner
        self.metrics = metrics
        self.log = log
        self.loop = loop
        self.queue = RequestQueue(spec.queue)
        self.instances: list[Instance] = []
        self.stats = Stats()
        self.accepting = True
        self.working_batch_size = spec.batch.max_size if spec.batch else 1
        self._validator = _validator(spec)
        self._batches: set[Batch] = set()
        self._wake: Any = None
        self._wake_at = 0.0
        self._broadcast: Any = None
        self._last_broadcast = 0.0
        self._idle_waiters: list[asyncio.Future[None]] = []

    @property
    def name(self) -> str:
        return self.spec.name

    # -- admission -------------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        """Admit `request` or raise ServdError (nothing is queued then)."""
        self._admission_check(request)
        now = self.loop.time()
        request.admitted_at = now
        request.endpoint = self
        timeout = self.spec.queue.timeout_s
        if timeout is not None:
            request.deadline = now + timeout
            request.timer = self.loop.call_at(request.deadline, self._expire, request)
        rank = request.last_rank = self.queue.push(request)
        if request.progress:
            eta = batching.eta(rank, self.working_batch_size, self._slot_remaining(now), self.stats.batch_time_s)
            request.sink.send(request, protocol.queued(request.id, rank, len(self.queue), eta))
        self._pump()

    def _admission_check(self, request: Request) -> None:
        if not self.accepting:
            raise ServdError(ErrorCode.UNAVAILABLE, f"endpoint {self.name!r} is not accepting requests (draining)")
        if self._validator is not None:
            error = jsonschema.exceptions.best_match(self._validator.iter_errors(request.data))
            if error is not None:
                where = "data" + "".join(f"[{p!r}]" for p in error.absolute_path)
                raise ServdError(ErrorCode.INVALID_INPUT, f"{where}: {error.message}")
        self.queue.check_room(request.client)

    def cancel(self, request: Request, message: str = "cancelled by the client") -> None:
        """End a queued or running request with `cancelled`; a queued one never runs."""
        running = request.state is State.RUNNING
        if request.state is State.QUEUED and self.queue.remove(request):
            self._schedule_broadcast()
        self.finish(request, Failed(ErrorCode.CANCELLED, message))
        if running:
            self._abandon_unwanted()

    def _expire(self, request: Request) -> None:
        request.timer = None
        if request.state is State.DONE:
            return
        where = "waiting in the queue" if request.state is State.QUEUED else "running"
        if request.state is State.QUEUED and self.queue.remove(request):
            self._schedule_broadcast()
        self.finish(
            request, Failed(ErrorCode.TIMEOUT, f"queue.timeout_s={self.spec.queue.timeout_s} passed while {where}")
        )
        if where == "running":
            self._abandon_unwanted()

    def _abandon_unwanted(self) -> None:
        """Calls still running for requests that all ended are stuck: free their threads' places."""
        for batch in self._batches:
            if batch.job is not None and not batch.job.abandoned and not batch.is_wanted():
                self.runner.abandon(batch.job)
                self.log.info(
                    "call abandoned", endpoint=self.name, device=batch.instance.model.device,
                    running_s=round(self.loop.time() - batch.started_at, 3),
                )  # fmt: skip

    def stuck_count(self) -> int:
        """Calls still running whose requests all ended (a timeout or cancel outlived by the model)."""
        return sum(1 for b in self._batches if not b.is_wanted())

    # -- dispatch --------------------------------------------------------------------------

    def _pump(self) -> None:
        """Start batches while a slot is free and requests wait; arm one timer for a partial batch."""
        dispatched = False
        while self.queue:
            instance = self._free_instance()
            if instance is None:
                break
            count = self._batch_count()
            if count is None:
                break
            self._launch(instance, self.queue.pop(count))
            dispatched = True
        if dispatched:
            self._schedule_broadcast()

    def _batch_count(self) -> int | None:
        if self.spec.batch is None:
            return 1
        now = self.loop.time()
        decision = batching.decide(
            len(self.queue),
            self.working_batch_size,
            self.queue.oldest().admitted_at,
            self.spec.batch.max_delay_ms / 1000,
            now,
        )
        if isinstance(decision, batching.WaitUntil):
            self._arm_wake(decision.when)
            return None
        return decision.count if decision else None

    def _arm_wake(self, when: float) -> None:
        if self._wake is not None and self._wake_at <= when:
            return
        if self._wake is not None:
            self.loop.remove_timeout(self._wake)
        self._wake_at = when
        self._wake = self.loop.call_at(when, self._on_wake)

    def _on_wake(self) -> None:
        self._wake = None
        self._pump()

    def _free_instance(self) -> Instance | None:
        """The least busy instance with a free slot (first listed wins a tie), or None."""
        best: Instance | None = None
        limit = self.spec.concurrency
        for instance in self.instances:
            if not instance.retired and instance.running < limit and (best is None or instance.running < best.running):
                best = instance
        return best

    def _launch(self, instance: Instance, requests: list[Request]) -> None:
        now = self.loop.time()
        for request in requests:
            request.state = State.RUNNING
            request.started_at = now
            if request.progress:
                request.sink.send(request, protocol.started(request.id))
        batch = Batch(requests, instance, now)
        instance.running += 1
        self._batches.add(batch)
        job = Job(
            model=instance.model,
            inputs=[r.data for r in requests],
            batched=self.spec.batch is not None,
            on_partial=functools.partial(self._on_partial, batch),
            on_done=functools.partial(self._on_done, batch),
            is_wanted=batch.is_wanted,
        )
        batch.job = job
        self.runner.run(job)

    def _on_partial(self, batch: Batch, offset: int, texts: list[str]) -> None:
        for request, text in zip(batch.requests[offset:], texts, strict=False):
            if request.progress and request.state is State.RUNNING:
                request.sink.send(request, protocol.partial(request.id, text))

    def _on_done(self, batch: Batch, result: BatchResult) -> None:
        instance = batch.instance
        instance.running -= 1
        self._batches.discard(batch)
        size = len(batch.requests)
        if not any(isinstance(o.error, CancelledBeforeStart) for o in result.outcomes):
            self.stats.record_batch(result.run_s)
            self.metrics.batch_size.observe(size)
        if result.oom_sizes:
            self._lower_batch_size(min(result.oom_sizes))
        for request, outcome in zip(batch.requests, result.outcomes, strict=True):
            try:
                self._end_with(request, outcome, result.run_s, size)
            except Exception as exc:  # noqa: BLE001 - a bug of ours fails this request, never the queue
                self.finish(request, Failed(ErrorCode.ENDPOINT_FAILED, "servd could not report this result"))
                _log_safely(self.log.error, "failed to end a request", endpoint=self.name, id=request.id, exc_info=exc)
        if instance.retired and instance.running == 0:
            self._close(instance)
        self._pump()

    def _end_with(self, request: Request, outcome: Outcome, run_s: float, size: int) -> None:
        if outcome.error is None:
            assert outcome.data_json is not None
            queue_s = request.started_at - request.admitted_at
            self.finish(request, Completed(outcome.data_json, queue_s, run_s, size))
        elif request.state is not State.DONE:
            self.finish(request, Failed(ErrorCode.ENDPOINT_FAILED, self._describe_failure(request, outcome.error)))

    def _describe_failure(self, request: Request, exc: BaseException) -> str:
        text = _safe_str(exc)
        if isinstance(exc, (BatchContractError, NotJSON)):
            _log_safely(self.log.error, "entrypoint broke its contract", endpoint=self.name, id=request.id, error=text)
            return text
        _log_safely(self.log.error, "entrypoint raised", endpoint=self.name, id=request.id, exc_info=exc)
        return f"{self.spec.entrypoint} raised {type(exc).__name__}: {_clip(text)}"

    def _lower_batch_size(self, failed_size: int) -> None:
        lowered = batching.lowered_batch_size(self.working_batch_size, failed_size)
        if lowered < self.working_batch_size:
            self.log.warning(
                "out of memory: batch size lowered", endpoint=self.name, failed_size=failed_size, batch_size=lowered
            )
            self.working_batch_size = lowered

    # -- ending ----------------------------------------------------------------------------

    def finish(self, request: Request, terminal: Terminal) -> None:
        """The one way a request ends here: terminal message, timer, stats, metrics, log line."""
        if not request.finish(terminal):
            return
        if request.timer is not None:
            self.loop.remove_timeout(request.timer)
            request.timer = None
        self.metrics.ended(terminal.outcome)
        if isinstance(terminal, Completed):
            self.stats.completed += 1
            self.stats.record_request(terminal.queue_s, terminal.run_s)
            self.metrics.queue_seconds.observe(terminal.queue_s)
            self.metrics.run_seconds.observe(terminal.run_s)
            self.log.info(
                "request", endpoint=self.name, id=request.id, outcome="completed",
                queue_s=round(terminal.queue_s, 6), run_s=round(terminal.run_s, 6), batch_size=terminal.batch_size,
            )  # fmt: skip
        else:
            self.stats.failed += 1
            self._log_failed(request, terminal)
        if self._idle_waiters and self.is_idle():
            for waiter in self._idle_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._idle_waiters.clear()

    def _log_failed(self, request: Request, terminal: Failed) -> None:
        now = self.loop.time()
        started = request.started_at or now
        self.log.info(
            "request", endpoint=self.name, id=request.id, outcome=terminal.code.word,
            queue_s=round(started - request.admitted_at, 6),
            run_s=round(now - request.started_at, 6) if request.started_at else None,
            batch_size=None, message=terminal.message,
        )  # fmt: skip

    # -- estimation ------------------------------------------------------------------------

    def _slot_remaining(self, now: float) -> list[float]:
        """Seconds until each slot is free, ascending (0 for a free slot)."""
        expected = self.stats.batch_time_s or 0.0
        busy = [max(0.0, expected - (now - b.started_at)) for b in self._batches if not b.instance.retired]
        live = sum(1 for i in self.instances if not i.retired)
        free = max(0, live * self.spec.concurrency - len(busy))
        return [0.0] * free + sorted(busy)

    def eta_for_new(self) -> float | None:
        return batching.eta(
            len(self.queue), self.working_batch_size, self._slot_remaining(self.loop.time()), self.stats.batch_time_s
        )

    def _schedule_broadcast(self) -> None:
        if self._broadcast is not None or not self.queue:
            return
        at = max(self.loop.time(), self._last_broadcast + ESTIMATION_INTERVAL_S)
        self._broadcast = self.loop.call_at(at, self._send_estimations)

    def _send_estimations(self) -> None:
        """Tell every waiting request whose rank changed its new rank and ETA."""
        self._broadcast = None
        now = self._last_broadcast = self.loop.time()
        slots = self._slot_remaining(now)
        size = len(self.queue)
        for rank, request in enumerate(self.queue):
            if request.last_rank != rank:
                request.last_rank = rank
                if request.progress:
                    eta = batching.eta(rank, self.working_batch_size, slots, self.stats.batch_time_s)
                    request.sink.send(request, protocol.estimation(request.id, rank, size, eta))

    # -- models, retuning, draining ----------------------------------------------------------

    def serve_models(self, models: list[Model]) -> None:
        """Send new batches to `models`; running calls finish on the old ones, which then close."""
        old = self.instances
        self.instances = [Instance(model) for model in models]
        for instance in old:
            instance.retired = True
            if instance.running == 0:
                self._close(instance)
        self._pump()

    def _close(self, instance: Instance) -> asyncio.Future[Any] | None:
        """Run the model's close() on a worker thread (it may free GPU memory slowly); once only."""
        close = instance.model.close
        if close is None:
            return None
        instance.model.close = None
        future = self.loop.run_in_executor(None, close)
        future.add_done_callback(functools.partial(self._closed, instance.model.device))
        return future

    def _closed(self, device: str, future: asyncio.Future[Any]) -> None:
        exc = future.exception()
        if exc is not None:
            self.log.error("model close() raised", endpoint=self.name, device=device, exc_info=exc)

    def retune(self, spec: EndpointSpec) -> None:
        """Apply new limits in place; queued requests keep their place."""
        if spec.batch != self.spec.batch:  # an OOM-lowered size holds until batch: itself is edited
            self.working_batch_size = spec.batch.max_size if spec.batch else 1
        self.spec = spec
        self.queue.limits = spec.queue
        self._validator = _validator(spec)
        self._pump()

    def running_count(self) -> int:
        """Requests running now (not counting calls whose requests already ended)."""
        return sum(1 for b in self._batches for r in b.requests if r.state is State.RUNNING)

    def is_idle(self) -> bool:
        return not self.queue and not any(b.is_wanted() for b in self._batches)

    async def wait_idle(self) -> None:
        if self.is_idle():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle_waiters.append(waiter)
        await waiter

    def end_all(self, code: ErrorCode, message: str) -> int:
        """End every admitted request (waiting or running) with `code`; returns how many."""
        ended = 0
        for request in self.queue.drain():
            self.finish(request, Failed(code, message))
            ended += 1
        for batch in list(self._batches):
            for request in batch.requests:
                if request.state is not State.DONE:
                    self.finish(request, Failed(code, message))
                    ended += 1
        return ended

    def close_models(self) -> list[asyncio.Future[Any]]:
        """Retire and close every instance; returns the close() calls still running."""
        closing = []
        for instance in self.instances:
            instance.retired = True
            future = self._close(instance)
            if future is not None:
                closing.append(future)
        return closing

    def snapshot(self) -> dict[str, Any]:
        """Effective config and live stats, as /v1/endpoints shows them."""
        spec = self.spec
        return {
            "name": self.name,
            "entrypoint": spec.entrypoint,
            "devices": [i.model.device for i in self.instances if not i.retired],
            "concurrency": spec.concurrency,
            "queue": {
                "max_size": spec.queue.max_size,
                "timeout_s": spec.queue.timeout_s,
                "max_per_client": spec.queue.max_per_client,
            },
            "batch": None
            if spec.batch is None
            else {"max_size": spec.batch.max_size, "max_delay_ms": spec.batch.max_delay_ms},
            "api_open": spec.api_open,
            "input_schema": None if spec.input_schema is None else dict(spec.input_schema),
            "accepting": self.accepting,
            "stats": self._live_stats(),
        }

    def _live_stats(self) -> dict[str, Any]:
        stats = self.stats
        return {
            "queued": len(self.queue),
            "running": self.running_count(),
            "workers": len(self._batches),  # calls running, on current and retired models alike
            "stuck": self.stuck_count(),
            "workers_max": self.spec.concurrency * sum(1 for i in self.instances if not i.retired),
            "batch_size": self.working_batch_size,
            "eta_s": self.eta_for_new(),
            "batch_time_s": stats.batch_time_s,
            "completed": stats.completed,
            "failed": stats.failed,
            "latency_s": {"p50": percentile(stats.totals, 0.5), "p99": percentile(stats.totals, 0.99)},
            "wait_s": {"p50": percentile(stats.waits, 0.5), "p99": percentile(stats.waits, 0.99)},
            "run_s": {"p50": percentile(stats.runs, 0.5), "p99": percentile(stats.runs, 0.99)},
        }


MAX_ERROR_CHARS = 500


def _clip(text: str) -> str:
    """Exception messages reach clients: keep them short (the full one is in the log)."""
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "… (truncated; see the log)"


def _safe_str(exc: BaseException) -> str:
    """str(exc), even for an exception whose __str__ raises (user code can do anything)."""
    try:
        return str(exc)
    except Exception:  # noqa: BLE001
        return f"<{type(exc).__name__} whose message cannot be printed>"


def _log_safely(emit: Any, event: str, **fields: Any) -> None:
    """Log, and if rendering fails (an unprintable exception), log without the traceback."""
    try:
        emit(event, **fields)
    except Exception:  # noqa: BLE001
        exc = fields.pop("exc_info", None)
        emit(event, **fields, exception_type=type(exc).__name__ if exc is not None else None)


def _validator(spec: EndpointSpec) -> jsonschema.protocols.Validator | None:
    if spec.input_schema is None:
        return None
    return jsonschema.Draft202012Validator(dict(spec.input_schema))
