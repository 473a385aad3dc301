"""A running endpoint: its queue, admission and dispatch, and the one door requests leave by.

Loop thread only. Dispatch is event-driven: `_pump` runs when a request arrives, a batch ends,
a slot opens or the batch-delay timer fires, and never otherwise. With every slot busy, short
unbatched calls line up behind the running ones (core.lines) rather than wait for the loop.
Every way a request can end (result, failure, cancel, timeout, drain) goes through `finish`, so
the terminal-message count, the metrics and the request log line stay in step (core.endings).
What a request is told on the way is a typed event (core.events); the endpoint never builds a
transport's wire text. Model instances live in core.instances, measurements in core.stats.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque
from time import monotonic
from typing import Any

from tornado.ioloop import IOLoop

from servd.config.spec import EndpointSpec
from servd.core import admission, batching, endings
from servd.core.events import STARTED, Estimation, Failed, Partial, Queued, Terminal
from servd.core.failures import log_safely
from servd.core.instances import Instance, Instances
from servd.core.intake import Intake
from servd.core.lines import Batch, Lines
from servd.core.queue import RequestQueue
from servd.core.request import Request, State
from servd.core.stats import Stats
from servd.errors import ErrorCode, ServdError
from servd.obs.metrics import EndpointSeries
from servd.runners.entrypoints import Model
from servd.runners.seam import (
    BatchResult,
    CancelledBeforeStart,
    Job,
    Outcome,
    Replicas,
    Runner,
)

ESTIMATION_INTERVAL_S = 0.25  # at most 4 estimation messages a second per request


class Endpoint:
    def __init__(self, spec: EndpointSpec, runner: Runner, metrics: EndpointSeries, log: Any, loop: IOLoop) -> None:
        self.spec = spec
        self.runner = runner
        self.metrics = metrics
        self.log = log
        self.loop = loop
        self.queue = RequestQueue(spec.queue)
        self.instances = Instances(spec.name, loop, log)
        self.stats = Stats()
        self.accepting = True
        self.working_batch_size = spec.batch.max_size if spec.batch else 1
        self._intake = Intake(spec)
        self._batches: set[Batch] = set()
        self._wake: Any = None
        self._wake_at = 0.0
        self.lines = Lines(runner.liner() if runner.capabilities.lines_up else None, loop)
        self._pump_pending = False
        self._broadcast: Any = None
        self._last_broadcast = 0.0
        self._idle_waiters: list[asyncio.Future[None]] = []

    @property
    def name(self) -> str:
        return self.spec.name

    # -- admission -------------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        """Admit `request` or raise ServdError (nothing is queued then)."""
        limits = self.spec.queue
        request.priority = admission.level_for(request.priority, request.highest_priority, limits, self.name)
        self._admission_check(request)
        now = monotonic()
        due = admission.deadline(limits, request.deadline_s, now)
        eta = None
        if limits.admit == "predicted":  # the rank it would get, before it takes a place
            rank = self.queue.rank_if_pushed(request.client, request.priority)
            eta = self._eta(rank, now)
            if (refusal := admission.doomed(eta, rank, now, due)) is not None:
                raise refusal
        request.admitted_at = now
        request.owner = self
        if due is not None:
            request.deadline = due
            request.timer = self.loop.call_later(max(0.0, due - now), self._expire, request)
        request.last_rank = self.queue.push(request)
        self.metrics.admitted_at(request.priority)
        if request.progress:  # the ETA costs a little: only when someone is told it (and it is judged)
            request.eta_s = eta if eta is not None else self._eta(request.last_rank, now)
            request.sink.send(request, Queued(request.last_rank, len(self.queue), request.eta_s))
        if self.queue.pushes_back_others(request.priority):
            self._schedule_broadcast()
        if self.spec.batch is not None and self.spec.batch.wait == "when_busy" and not self._batches:
            self._pump_soon()
        else:
            self._pump()

    def _eta(self, rank: int, now: float) -> float | None:
        return batching.eta(rank, self.working_batch_size, self._slot_remaining(now), self.stats.batch_time_s)

    def _pump_soon(self) -> None:
        """Pump once the loop has read what arrived with this request: an idle batched endpoint
        (batch.wait: when_busy) runs at once, and a burst read in one go still forms one batch."""
        if not self._pump_pending:
            self._pump_pending = True
            self.loop.asyncio_loop.call_soon(self._pump_now)  # type: ignore[attr-defined]

    def _pump_now(self) -> None:
        self._pump_pending = False
        self._pump()

    def _admission_check(self, request: Request) -> None:
        if not self.accepting:
            raise ServdError(ErrorCode.UNAVAILABLE, f"endpoint {self.name!r} is not accepting requests (draining)")
        request.data = self._intake.admit(request.data, request.size)
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
        assert request.deadline is not None  # a timer is armed only with a deadline
        limit = admission.deadline_setting(request.deadline_s, request.deadline - request.admitted_at)
        self.finish(request, Failed(ErrorCode.TIMEOUT, f"{limit} passed while {where}"))
        if where == "running":
            self._abandon_unwanted()

    def _abandon_unwanted(self) -> None:
        """Calls still running for requests that all ended are stuck: free their threads' places."""
        for batch in self.lines.calls():
            if batch.job is not None and not batch.job.abandoned and not batch.is_wanted():
                self.runner.abandon(batch.job)
                self.log.info(
                    "call abandoned", endpoint=self.name, device=batch.instance.model.device,
                    running_s=round(monotonic() - batch.started_at, 3),
                )  # fmt: skip

    def stuck_count(self) -> int:
        """Calls still running whose requests all ended (a timeout or cancel outlived by the model)."""
        return sum(1 for b in self.lines.calls() if not b.is_wanted())

    # -- dispatch --------------------------------------------------------------------------

    def _pump(self) -> None:
        """Start batches while a slot is free and requests wait; arm one timer for a partial batch."""
        dispatched = False
        while self.queue:
            instance = self.instances.free(self.spec.concurrency)
            if instance is None:
                break
            count = self._batch_count()
            if count is None:
                break
            self._launch(instance, self.queue.pop(count))
            dispatched = True
        if self.queue and self.lines.have_room():
            dispatched = self._line_up() or dispatched
        if dispatched:
            self._schedule_broadcast()

    def _line_up(self) -> bool:
        """Every slot is busy with short calls: line the next requests up behind the running ones
        (the shortest line first), so a worker goes from one call to the next without a round
        trip through the loop. They leave the queue in its order and are `started` from here; a
        call running for longer than LINE_UP_OVERDUE_S (slow, or hung) takes no more."""
        lines = self.lines.joinable()
        lined = False
        while self.queue and lines:
            line = min(lines, key=len)
            if len(line) > self.lines.depth:
                break
            self._launch(line[0].instance, self.queue.pop(1), line)
            self.stats.lined_up += 1
            lined = True
        return lined

    def _batch_count(self) -> int | None:
        if self.spec.batch is None:
            return 1
        waiting, fitting = len(self.queue), 0
        if self._intake.layout is not None:  # stacked tensors: batch.max_size counts rows
            fitting, waiting, full = batching.fit_rows((r.data.rows for r in self.queue), self.working_batch_size)
            if full:
                return fitting
        now = monotonic()
        decision = batching.decide(
            waiting,
            self.working_batch_size,
            self.queue.oldest_admitted_at(),
            self.spec.batch.max_delay_ms / 1000,
            now,
            run_when_idle=self.spec.batch.wait == "when_busy" and not self._batches,
        )
        if isinstance(decision, batching.WaitUntil):
            self._arm_wake(decision.when)
            return None
        if decision and self._intake.layout is not None:
            return fitting
        return decision.count if decision else None

    def _arm_wake(self, when: float) -> None:
        if self._wake is not None and self._wake_at <= when:
            return
        if self._wake is not None:
            self.loop.remove_timeout(self._wake)
        self._wake_at = when
        self._wake = self.loop.call_later(max(0.0, when - monotonic()), self._on_wake)

    def _on_wake(self) -> None:
        self._wake = None
        self._pump()

    def _launch(self, instance: Instance, requests: list[Request], line: deque[Batch] | None = None) -> None:
        now = monotonic()
        for request in requests:
            request.state = State.RUNNING
            request.started_at = now
            if request.progress:
                request.sink.send(request, STARTED)
        layout = self._intake.layout
        size = sum(r.data.rows for r in requests) if layout is not None and layout.batched else len(requests)
        batch = Batch(requests, instance, now, size)
        before = self.lines.place(batch, line)
        instance.running += 1
        self._batches.add(batch)
        job = Job(
            model=instance.model,
            inputs=[r.data for r in requests],
            batched=self.spec.batch is not None,
            on_partial=functools.partial(self._on_partial, batch),
            on_done=functools.partial(self._on_done, batch),
            is_wanted=batch.is_wanted,
            tensors=layout,
        )
        batch.job = job
        self.lines.start(job, before, self.runner.run)

    def _leave_line(self, batch: Batch) -> None:
        """`batch` returned: the next of its line (if any) now holds the thread."""
        following = self.lines.leave(batch)
        if following is not None and not following.is_wanted():  # ended while lined up; its call may run now
            self._abandon_unwanted()

    def _on_partial(self, batch: Batch, offset: int, texts: list[str]) -> None:
        for request, text in zip(batch.requests[offset:], texts, strict=False):
            if request.progress and request.state is State.RUNNING:
                request.sink.send(request, Partial(text))

    def _on_done(self, batch: Batch, result: BatchResult) -> None:
        if result.lost:
            return self.requeue(batch, result)
        self._batches.discard(batch)
        self._leave_line(batch)
        size = batch.size
        if not any(isinstance(o.error, CancelledBeforeStart) for o in result.outcomes):
            self.stats.record_batch(result.run_s)
            self.lines.judge_depth(self.stats.batch_time_s, self.spec.batch is not None)
            self.metrics.batch_size.observe(size)
        if result.oom_sizes:
            self._lower_batch_size(min(result.oom_sizes))
        for request, outcome in zip(batch.requests, result.outcomes, strict=True):
            request.started_at = max(request.started_at, result.began_at)  # later if it waited in a line
            try:
                self._end_with(request, outcome, result.run_s, size)
            except Exception as exc:  # noqa: BLE001 - a bug of ours fails this request, never the queue
                self.finish(request, Failed(ErrorCode.ENDPOINT_FAILED, "servd could not report this result"))
                log_safely(self.log.error, "failed to end a request", endpoint=self.name, id=request.id, exc_info=exc)
        self.instances.call_ended(batch.instance)
        self._pump()

    def _end_with(self, request: Request, outcome: Outcome, run_s: float, size: int) -> None:
        if outcome.error is not None and request.state is State.DONE:
            return  # ended while its call ran (cancel, timeout): the call's failure is no one's news
        self.finish(
            request, endings.terminal_for(request, outcome, run_s, size, self.name, self.spec.entrypoint, self.log)
        )

    def requeue(self, batch: Batch, result: BatchResult) -> None:
        """The replica running `batch` was lost (its process or node died; runners.ray): its
        requests go back to the head of the queue, in order, to run on another replica. Once: a
        request lost a second time, or one that already streamed partials (it must not run
        twice), ends with `unavailable`."""
        self._batches.discard(batch)
        self._leave_line(batch)
        self.instances.call_ended(batch.instance)
        back, lost = endings.rerun_or_end(batch.requests, result.outcomes)
        for request, terminal in lost:
            self.finish(request, terminal)
        self.queue.push_front(back)
        reason = result.outcomes[0].error if result.outcomes else None
        self.log.warning("batch requeued", endpoint=self.name, requeued=len(back), reason=str(reason))
        self._schedule_broadcast()
        self._pump()

    def slots_changed(self) -> None:
        """A replica became reachable or was lost (runners.ray): dispatch and ETAs follow."""
        self._schedule_broadcast()
        self._pump()

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
        endings.record(request, terminal, self.name, self.stats, self.metrics, self.log)
        if self._idle_waiters and self.is_idle():
            for waiter in self._idle_waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._idle_waiters.clear()

    # -- estimation ------------------------------------------------------------------------

    def _slot_remaining(self, now: float) -> list[float]:
        slots = self.instances.live() * self.spec.concurrency
        return self.lines.slot_remaining(now, self.stats.batch_time_s or 0.0, slots)

    def replicas(self) -> Replicas | None:
        """The runner's description of this endpoint's models (replica states on a cluster), or None."""
        return self.runner.describe(self.spec, [i.model for i in self.instances.current])

    def eta_for_new(self) -> float | None:
        return self._eta(len(self.queue), monotonic())

    def _schedule_broadcast(self) -> None:
        if self._broadcast is not None or not self.queue:
            return
        at = max(monotonic(), self._last_broadcast + ESTIMATION_INTERVAL_S)
        self._broadcast = self.loop.call_later(max(0.0, at - monotonic()), self._send_estimations)

    def _send_estimations(self) -> None:
        """Tell every waiting request whose rank changed its new rank and ETA."""
        self._broadcast = None
        now = self._last_broadcast = monotonic()
        slots = self._slot_remaining(now)
        size = len(self.queue)
        for rank, request in enumerate(self.queue):
            if request.last_rank != rank:
                request.last_rank = rank
                if request.progress:
                    eta = batching.eta(rank, self.working_batch_size, slots, self.stats.batch_time_s)
                    request.sink.send(request, Estimation(rank, size, eta))

    # -- models, retuning, draining ----------------------------------------------------------

    def serve_models(self, models: list[Model]) -> None:
        """Send new batches to `models`; running calls finish on the old ones, which then close."""
        self.instances.serve(models)
        self._pump()

    def set_log(self, log: Any) -> None:
        """The logger after a reload changed server.log."""
        self.log = self.instances.log = log

    def retune(self, spec: EndpointSpec) -> None:
        """Apply new limits in place; queued requests keep their place."""
        if spec.batch != self.spec.batch:  # an OOM-lowered size holds until batch: itself is edited
            self.working_batch_size = spec.batch.max_size if spec.batch else 1
        self.spec = spec
        self.queue.reconfigure(spec.queue)
        self._schedule_broadcast()  # a new order or levels re-sorted what waits
        self._intake = Intake(spec)
        self.lines.judge_depth(self.stats.batch_time_s, self.spec.batch is not None)
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
        return self.instances.close_all()

    def calls_running(self) -> int:
        """Calls running now, on current and retired models alike (requests ended or not)."""
        return sum(1 for _ in self.lines.calls())

    def running_devices(self) -> list[str]:
        """The device of each call running now: what a shutdown that can't wait for them names."""
        return [b.instance.model.device for b in self.lines.calls()]
