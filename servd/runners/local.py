"""Entrypoints run here, on the shared pool; nothing here touches a queue or a request.

A Job is "run these inputs on this model, tell me when it's done". The endpoint hands jobs to
a Runner and hears back on the loop thread (IOLoop.add_callback). LocalRunner, the thread
pool, is the first Runner; a cluster runner (Ray actors) can take its place behind the same
interface (DESIGN.md §8).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from tornado.ioloop import IOLoop
from tornado.log import app_log

from servd.inputs import tensors
from servd.inputs.validation import InvalidInput, Unchecked
from servd.protocols import ws_messages as protocol
from servd.runners.devices import is_oom, loaded_torch, sync_torch_threads
from servd.runners.entrypoints import Model


class BatchContractError(Exception):
    """A batched entrypoint broke its contract (not a list, wrong length): no input is to blame."""


@dataclass(slots=True)
class Outcome:
    """One input's result: JSON text, or the exception that ended it.

    A result also says which call produced it: that call's length and duration. They differ from
    the job's when failure isolation split it (a request that completes in a retried half of 2
    ran in a call of 2, for that call's time).
    """

    data_json: str | None = None
    error: BaseException | None = None
    run_s: float = 0.0
    batch_size: int = 0
    payload: Any = None  # a tensor call's outputs; after execute, what its reply made of them if not JSON


@dataclass(slots=True)
class BatchResult:
    outcomes: list[Outcome]
    run_s: float
    oom_sizes: list[int] = field(default_factory=list)
    lost: bool = False  # the slot itself was lost (a cluster replica died): the batch goes back to the queue
    began_at: float = 0.0  # when the call began, by the loop's clock (time.time()) on this machine; 0: not known

    @classmethod
    def failed(cls, inputs: list[Any], error: BaseException) -> BatchResult:
        """Every input ends with `error`: the call could not run, or could not report."""
        return cls([Outcome(error=error) for _ in inputs], 0.0)


@dataclass(slots=True, eq=False)
class Job:
    model: Model
    inputs: list[Any]  # an `Unchecked` one is checked against its input_schema first (validation.py)
    batched: bool
    on_partial: Callable[[int, list[str]], None]  # (offset, JSON texts); called on the loop
    on_done: Callable[[BatchResult], None]  # called on the loop
    is_wanted: Callable[[], bool]  # read from the worker: False once every request ended
    tensors: tensors.Layout | None = None  # declared tensors: inputs are TensorInputs, stacked on a batched endpoint
    finished: bool = False  # written under the pool's lock
    abandoned: bool = False
    pool: Any = None
    then: Job | None = None  # lined up behind this one: runs next on the same thread (written under the pool's lock)


class Runner(Protocol):
    def run(self, job: Job) -> None:
        """Start `job` on some slot; `job.on_done` is called exactly once, on the loop."""

    def abandon(self, job: Job) -> None:
        """Every request of `job` ended while its call still runs: its thread stops counting."""

    def resize(self, max_threads: int) -> None: ...

    def shutdown(self) -> None: ...


class _Pool:
    """Worker threads on one SimpleQueue; a thread is started only when none is idle.

    A call whose requests all ended (timeout, cancel) while it still runs is abandoned: its
    thread no longer counts against max_threads until it returns, so a hung model can't take
    the threads of every other endpoint with it.
    """

    def __init__(
        self,
        max_threads: int,
        work: Callable[[Job], BatchResult],
        report: Callable[[Job, BatchResult, bool], None],
    ) -> None:
        self.max_threads = max_threads
        self._work = work
        self._report = report
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._abandoned = 0
        self._threads: list[threading.Thread] = []

    def submit(self, job: Job) -> None:
        job.pool = self
        with self._lock:
            if self._idle:
                self._idle -= 1
            elif len(self._threads) < self.max_threads + self._abandoned:
                thread = threading.Thread(target=self._run, name=f"servd-worker_{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
        self._jobs.put(job)

    def line_up(self, job: Job, before: Job) -> bool:
        """Run `job` on `before`'s thread right after it; False if `before` has already finished."""
        with self._lock:
            if before.finished:
                return False
            job.pool = self
            before.then = job
            return True

    def _run(self) -> None:
        _yield_on_wakeup()
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is None:
                return
            while job is not None:
                result = self._work(job)
                with self._lock:  # idle before the loop hears back: the next job reuses this thread
                    job.finished = True
                    if job.abandoned:
                        self._abandoned -= 1
                    then = job.then
                    if then is None:
                        self._idle += 1
                self._report(job, result, then is None)
                job = then
            del result  # not held while this thread waits for its next job

    def abandon(self, job: Job) -> None:
        with self._lock:
            if not job.finished and not job.abandoned:
                job.abandoned = True
                self._abandoned += 1

    def shutdown(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)


class LocalRunner:
    """The shared pool of `server.max_threads` threads.

    Per request the expensive part is not Python but handing work between the loop and a worker:
    each hand-over is a wake-up (a system call) and, when both share a core, a context switch.
    So a job goes to the pool the moment it starts, results that finish close together come
    back with one wake-up of the loop, and that wake-up is an eventfd (`_LoopWake`), cheaper
    than asyncio's self-pipe. A short job can be lined up behind a running one (`run_after`):
    the thread runs it next, and only the last of the line wakes the loop. The pool's threads
    are daemon threads: a call still running after the drain deadline must not keep the process
    from exiting.
    """

    def __init__(self, max_threads: int, loop: IOLoop) -> None:
        self._loop = loop
        self._pool = _Pool(max_threads, self._work, self._report)
        self.max_threads = max_threads
        self._inbox: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._wake_pending = False
        self._wake = _LoopWake(loop, self._drain)

    def _to_loop(self, fn: Callable[..., None], *args: Any, wake: bool = True) -> None:
        """Worker thread: queue a call for the loop; one wake-up per burst, order kept."""
        self._inbox.append((fn, args))
        if wake and not self._wake_pending:
            self._wake_pending = True
            self._wake.wake()

    def collect(self) -> None:
        """Loop thread: take what workers reported without waking it (lined-up calls' results)."""
        if self._inbox:
            self._drain()

    def _drain(self) -> None:
        self._wake_pending = False
        inbox = self._inbox
        while inbox:
            fn, args = inbox.popleft()
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - one broken report must not stop the ones behind it
                app_log.exception("servd: a worker report failed on the loop: %r", fn)

    def run(self, job: Job) -> None:
        self._wake.open()
        self._pool.submit(job)

    def run_after(self, job: Job, before: Job) -> None:
        """Run `job` once `before` has returned, on the same thread, without a round trip through
        the loop; the result of `before` then waits for the loop's next wake-up or `collect`."""
        pool = before.pool
        if pool is None or not pool.line_up(job, before):
            self._pool.submit(job)

    def abandon(self, job: Job) -> None:
        job.pool.abandon(job)

    def resize(self, max_threads: int) -> None:
        """New jobs go to a pool of the new size; the old one finishes what it runs, then exits."""
        if max_threads != self.max_threads:
            old, self._pool = self._pool, _Pool(max_threads, self._work, self._report)
            self.max_threads = max_threads
            old.shutdown()

    def shutdown(self) -> None:
        self._pool.shutdown()
        self._wake.close()

    def _work(self, job: Job) -> BatchResult:
        began_at = time.time()  # IOLoop.time()'s clock: a lined-up job's wait in line is queue time
        try:
            result = execute(job, lambda offset, texts: self._to_loop(job.on_partial, offset, texts))
        except BaseException as exc:  # noqa: BLE001 - the loop must hear back whatever happened
            result = BatchResult.failed(job.inputs, exc)
        result.began_at = began_at
        return result

    def _report(self, job: Job, result: BatchResult, wake: bool) -> None:
        self._to_loop(job.on_done, result, wake=wake)


class _LoopWake:
    """Wakes the loop from a worker thread to run `callback` there.

    On Linux an eventfd registered with the loop: one write and one read, where asyncio's
    call_soon_threadsafe writes to a socket pair and reads it back (about 4 us less per request
    at `concurrency: 1`, measured in benchmarks/). Elsewhere, IOLoop.add_callback. The fd is
    registered on the loop thread, at the first job, and closed at shutdown.
    """

    def __init__(self, loop: IOLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._fd: int | None = None
        self._closed = False
        self._lock = threading.Lock()  # a write never meets a closed (and maybe reused) fd number

    def open(self) -> None:
        """Loop thread: register the eventfd (once)."""
        if self._fd is None and not self._closed and hasattr(os, "eventfd"):
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._loop.add_handler(fd, self._readable, IOLoop.READ)
            self._fd = fd

    def wake(self) -> None:
        """Worker thread: run the callback on the loop soon."""
        with self._lock:
            if self._fd is not None:
                os.eventfd_write(self._fd, 1)
                return
        self._loop.add_callback(self._callback)

    def _readable(self, fd: int, events: int) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(fd)
        self._callback()

    def close(self) -> None:
        """Loop thread: unregister and close; later wake-ups fall back to add_callback."""
        with self._lock:
            self._closed = True
            fd, self._fd = self._fd, None
        if fd is not None:
            self._loop.remove_handler(fd)
            os.close(fd)


def _yield_on_wakeup() -> None:
    """Worker thread: ask Linux not to preempt the thread that woke this one (SCHED_BATCH).

    Handing a job to a worker wakes it; on a busy core a plain thread then preempts the loop at
    once, only to wait for the GIL the loop still holds, and the two trade the core back and
    forth (about 7 context switches per request at `concurrency: 1`). A batch thread waits for
    the loop to block, then runs: 2 switches per request, the least a hand-over can take. It
    changes nothing else: priority, nice value and share of the CPU stay as they were.
    """
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_BATCH"):
        with contextlib.suppress(OSError):  # a platform or sandbox that refuses: keep the default
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def execute(job: Job, emit: Callable[[int, list[str]], None]) -> BatchResult:
    """Run a job's inputs, isolating failures: a failed batch is retried in halves."""
    started = time.perf_counter()
    oom_sizes: list[int] = []
    sync_torch_threads()
    with _inference_mode():
        if job.tensors is not None:
            outcomes = _run_isolating(job, job.inputs, 0, emit, oom_sizes)
            _reply(job.inputs, outcomes)
        elif any(type(value) is Unchecked for value in job.inputs):
            outcomes = _check_then_run(job, emit, oom_sizes)
        else:
            outcomes = _run_isolating(job, job.inputs, 0, emit, oom_sizes)
    return BatchResult(outcomes, time.perf_counter() - started, oom_sizes)


def _reply(inputs: list[tensors.TensorInput], outcomes: list[Outcome]) -> None:
    """Each tensor request's outputs encoded as its transport wants them, here on the worker."""
    for request, outcome in zip(inputs, outcomes, strict=True):
        if outcome.error is not None:
            continue
        try:
            encoded = request.reply(outcome.payload)
        except (tensors.TensorError, TypeError, ValueError) as exc:
            outcome.error, outcome.payload = NotJSON(f"servd could not encode the outputs: {exc}"), None
            continue
        if isinstance(encoded, str):
            outcome.data_json, outcome.payload = encoded, None
        else:
            outcome.data_json, outcome.payload = "null", encoded


Emit = Callable[[int, list[str]], None]


def _check_then_run(job: Job, emit: Emit, oom_sizes: list[int]) -> list[Outcome]:
    """Check the inputs admitted unchecked (validation.py: too large to check on the loop), then
    call the model with those that pass; the others end with InvalidInput, never seen by it."""
    outcomes = [Outcome() for _ in job.inputs]
    passed: list[Any] = []
    positions: list[int] = []  # where each of `passed` stands in job.inputs
    for position, value in enumerate(job.inputs):
        if type(value) is Unchecked:
            problem = value.check.problem(value.data)
            if problem is not None:
                outcomes[position] = Outcome(error=InvalidInput(problem))
                continue
            value = value.data
        passed.append(value)
        positions.append(position)
    if passed:
        ran = _run_isolating(job, passed, 0, _emit_at(emit, positions), oom_sizes)
        for position, outcome in zip(positions, ran, strict=True):
            outcomes[position] = outcome
    return outcomes


def _emit_at(emit: Emit, positions: list[int]) -> Emit:
    """`emit` for a call on some of the job's inputs: partials go to the inputs' own positions."""
    if len(positions) == positions[-1] + 1:  # all of them, in order
        return emit

    def emit_at(offset: int, texts: list[str]) -> None:
        for index, text in enumerate(texts):
            emit(positions[offset + index], [text])

    return emit_at


def _run_isolating(job: Job, inputs: list[Any], offset: int, emit: Emit, oom_sizes: list[int]) -> list[Outcome]:
    result = _attempt(job, inputs, offset, emit)
    return result if isinstance(result, list) else _isolate(job, inputs, offset, emit, oom_sizes, result)


def _isolate(
    job: Job, inputs: list[Any], offset: int, emit: Emit, oom_sizes: list[int], error: Exception
) -> list[Outcome]:
    """`inputs` failed together with `error`: retry in halves until the failing ones fail alone.

    If both halves fail with the very same error (type and message) it isn't one input's fault
    (a broken model, a missing file): every input fails with it, after 3 calls instead of 2n-1.
    Out-of-memory is always split further, since smaller batches are its cure.
    """
    oom = is_oom(error)
    if oom and len(inputs) == 1 and job.tensors is not None and job.tensors.batched and inputs[0].rows > 1:
        error.__traceback__ = None
        oom_sizes.append(inputs[0].rows)
        return [_halve_rows(job, inputs[0], offset, emit, oom_sizes)]
    if len(inputs) == 1 or isinstance(error, BatchContractError):
        return [Outcome(error=error) for _ in inputs]
    if oom:
        oom_sizes.append(_size(job, inputs))
        # The traceback's frames hold the failed call's tensors (activations): drop them, or the
        # halves run out of memory too, with the whole batch's memory still allocated.
        error.__traceback__ = None
    middle = len(inputs) // 2 if job.tensors is None else tensors.middle(inputs)
    parts = ((inputs[:middle], offset), (inputs[middle:], offset + middle))
    results = [_attempt(job, part, at, emit) for part, at in parts]
    if not oom and all(isinstance(r, Exception) and _same_error(r, error) for r in results):
        return [Outcome(error=error) for _ in inputs]
    outcomes: list[Outcome] = []
    for (part, at), result in zip(parts, results, strict=True):
        outcomes += result if isinstance(result, list) else _isolate(job, part, at, emit, oom_sizes, result)
    return outcomes


def _halve_rows(job: Job, request: tensors.TensorInput, offset: int, emit: Emit, oom_sizes: list[int]) -> Outcome:
    """One request of several rows ran out of memory alone: run its halves (each halved again if
    need be) and join their outputs, so a request that fits in pieces still completes."""
    parts = [_run_isolating(job, [half], offset, emit, oom_sizes)[0] for half in tensors.halve_rows(request)]
    failed = next((part for part in parts if part.error is not None), None)
    if failed is not None:
        return failed
    return Outcome(
        payload=tensors.join_rows([part.payload for part in parts]),
        run_s=sum(part.run_s for part in parts),
        batch_size=max(part.batch_size for part in parts),
    )


def _size(job: Job, inputs: list[Any]) -> int:
    """A call's batch size: its requests, or on a stacked tensor endpoint its rows."""
    if job.tensors is not None and job.tensors.batched:
        return sum(request.rows for request in inputs)
    return len(inputs)


def _attempt(job: Job, inputs: list[Any], offset: int, emit: Emit) -> list[Outcome] | Exception:
    """One call: its outcomes, or the exception to isolate (a stream that already sent partials fails as is)."""
    streamed = False

    def tracked_emit(at: int, texts: list[str]) -> None:
        nonlocal streamed
        streamed = True
        emit(at, texts)

    started = time.perf_counter()
    try:
        outcomes = _call(job, inputs, offset, tracked_emit)
    except Exception as exc:  # noqa: BLE001 - whatever user code raises is isolated and reported
        return [Outcome(error=exc) for _ in inputs] if streamed else exc
    run_s, size = time.perf_counter() - started, _size(job, inputs)
    for outcome in outcomes:
        outcome.run_s = run_s
        outcome.batch_size = size
    return outcomes


def _same_error(a: BaseException, b: BaseException) -> bool:
    return type(a) is type(b) and str(a) == str(b)


def _call(job: Job, inputs: list[Any], offset: int, emit: Callable[[int, list[str]], None]) -> list[Outcome]:
    if not job.is_wanted():
        return [Outcome(error=CancelledBeforeStart()) for _ in inputs]
    model = job.model
    if job.tensors is not None:
        try:
            outputs = tensors.run(model.call, inputs, job.tensors, _handoff(job.tensors, model.device))
        except tensors.OutputMismatch as exc:
            raise BatchContractError(str(exc)) from None
        return [Outcome(payload=o) for o in outputs]
    if not job.batched:
        value = model.call(inputs[0])
        if model.streams:
            return [_last_of_stream(value, offset, emit, job)]
        return [_encode(value)]
    values = model.call(list(inputs))
    if model.streams:
        return _batched_stream(values, len(inputs), offset, emit, job)
    return [_encode(v) for v in _checked_batch(values, len(inputs))]


def _handoff(layout: tensors.Layout, device: str) -> Callable[[tensors.Arrays], Any]:
    """What the entrypoint is handed: the arrays, or (tensors.as: torch) torch tensors on its device."""
    if layout.spec.as_ != "torch":
        return _same
    import torch  # only endpoints that asked for torch tensors need it

    def to_torch(arrays: tensors.Arrays) -> dict[str, Any]:
        handed: dict[str, Any] = {}
        for name, array in arrays.items():
            if array.dtype == object:  # BYTES: torch has no such tensor
                handed[name] = array
                continue
            if not array.flags.writeable:  # torch warns about (and can't guard) a read-only buffer
                array = array.copy()
            handed[name] = torch.from_numpy(array).to(device)
        return handed

    return to_torch


def _same(arrays: tensors.Arrays) -> tensors.Arrays:
    return arrays


class CancelledBeforeStart(Exception):
    """Every request of the job ended before its call began, so the call was skipped."""


def _last_of_stream(
    stream: Generator[Any, None, None], offset: int, emit: Callable[[int, list[str]], None], job: Job
) -> Outcome:
    last = Outcome(data_json="null")
    with contextlib.closing(stream):
        for value in stream:
            last = _encode(value)
            if last.error is not None:
                return last
            assert last.data_json is not None
            emit(offset, [last.data_json])
            if not job.is_wanted():
                break
    return last


def _batched_stream(
    stream: Generator[Any, None, None], size: int, offset: int, emit: Callable[[int, list[str]], None], job: Job
) -> list[Outcome]:
    last = [Outcome(data_json="null") for _ in range(size)]
    with contextlib.closing(stream):
        for values in stream:
            last = [_encode(v) for v in _checked_batch(values, size)]
            emit(offset, [o.data_json if o.data_json is not None else "null" for o in last])
            if not job.is_wanted():
                break
    return last


def _checked_batch(values: Any, size: int) -> list[Any]:
    if not isinstance(values, (list, tuple)):
        raise BatchContractError(
            f"a batched entrypoint must return a list of {size} results (one per input), got {type(values).__name__}"
        )
    if len(values) != size:
        raise BatchContractError(
            f"a batched entrypoint must return one result per input: expected {size}, got {len(values)}"
        )
    return list(values)


def _encode(value: Any) -> Outcome:
    try:
        return Outcome(data_json=protocol.dumps(value))
    except (TypeError, ValueError) as exc:
        return Outcome(error=NotJSON(f"the entrypoint returned a value that is not JSON: {exc}"))
    except RecursionError:
        depth = _nesting(value)
        deep = f"more than {MAX_NESTING_MEASURED}" if depth > MAX_NESTING_MEASURED else str(depth)
        return Outcome(error=NotEncodable(f"it is nested {deep} levels deep, more than the JSON encoder can take"))


class NotJSON(TypeError):
    """The entrypoint returned something json.dumps can't encode (a tensor, a set, NaN)."""


class NotEncodable(Exception):
    """A JSON value that servd's encoder could not write (nested deeper than it recurses): servd's
    limit, not the entrypoint's fault, and said so to the client and in the log."""


MAX_NESTING_MEASURED = 100_000


def _nesting(value: Any) -> int:
    """Levels of lists, tuples and dicts in `value`, counted without recursion (up to a cap)."""
    level, depth = [value], 0
    while level and depth <= MAX_NESTING_MEASURED:
        below: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                below += item.values()
            elif isinstance(item, (list, tuple)):
                below += item
        level = [item for item in below if isinstance(item, (dict, list, tuple))]
        depth += 1
    return depth


@contextlib.contextmanager
def _inference_mode() -> Iterator[None]:
    torch = loaded_torch()
    if torch is None:
        yield
        return
    with torch.inference_mode():
        yield
