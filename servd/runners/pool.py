"""The local runner: the shared pool of `server.max_threads` worker threads, and the loop's wake-up.

The loop hands jobs to worker threads and hears back through one eventfd per burst of results
(`_LoopWake`). Loop thread: `LocalRunner`'s methods. Worker threads: `_Pool._run` and what it
calls (runners.execution); they touch the pool's counters only under its lock and reach the loop
only through `_to_loop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from tornado.ioloop import IOLoop
from tornado.log import app_log

from servd.runners.entrypoints import Entrypoint, Model
from servd.runners.execution import execute
from servd.runners.seam import BatchResult, Capabilities, Job, Liner, PartialBacklog, Replicas

if TYPE_CHECKING:
    from servd.config.spec import EndpointSpec

LOCAL = Capabilities(lines_up=True)


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

    def __init__(self, max_threads: int, loop: IOLoop, log: Callable[[], Any]) -> None:
        self._loop = loop
        self._log = log
        self._pool = _Pool(max_threads, self._work, self._report)
        self.max_threads = max_threads
        self._inbox: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._wake_pending = False
        self._wake = _LoopWake(loop, self._drain)

    # -- the seam: loading and description -------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        return LOCAL

    async def prepare(self, search_path: list[str]) -> None:
        """Nothing to join: entrypoints import in this process."""

    async def load(
        self, spec: EndpointSpec, entry: Entrypoint, placed: tuple[str, ...], running: Sequence[Model]
    ) -> list[Model]:
        """One model per device, built on a worker thread: constructors may load weights for minutes."""
        models = []
        for device in placed:
            started = time.perf_counter()
            model = await asyncio.get_running_loop().run_in_executor(None, entry.instantiate, device, spec.options)
            self._log().info(
                "model loaded", endpoint=spec.name, device=device, load_s=round(time.perf_counter() - started, 3)
            )
            models.append(model)
        return models

    def describe(self, spec: EndpointSpec, models: Sequence[Model]) -> Replicas | None:
        return None  # in-process models: their devices say it all

    def liner(self) -> Liner | None:
        return self

    # -- running ---------------------------------------------------------------------------

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
        began_at = time.monotonic()  # the core's clock for durations: a lined-up job's wait in line is queue time
        try:
            result = execute(job, functools.partial(self._emit, job))
        except BaseException as exc:  # noqa: BLE001 - the loop must hear back whatever happened
            result = BatchResult.failed(job.inputs, exc)
        result.began_at = began_at
        return result

    def _emit(self, job: Job, offset: int, texts: list[str]) -> None:
        """Worker thread: hand partial results to the loop; wait first if too many are on their way."""
        backlog = job.backlog
        if backlog is None:
            backlog = job.backlog = PartialBacklog()
        size = sum(len(text) for text in texts)
        backlog.add(size)
        self._to_loop(_deliver, job, backlog, size, offset, texts)
        backlog.wait_for_room(job.is_wanted)

    def _report(self, job: Job, result: BatchResult, wake: bool) -> None:
        self._to_loop(job.on_done, result, wake=wake)


def _deliver(job: Job, backlog: PartialBacklog, size: int, offset: int, texts: list[str]) -> None:
    """Loop thread: the partials reach the endpoint (and its sinks); the worker may pull more."""
    try:
        job.on_partial(offset, texts)
    finally:
        backlog.delivered(size)


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
