"""Client: the blocking API, an AsyncClient driven on an event loop in a background thread.

Each Client owns one daemon thread running its own loop; calls from any thread hand their
work to it and wait. Don't call a Client from a coroutine running on the loop of an
in-process server: the call blocks that loop (use AsyncClient there, or asyncio.to_thread).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import weakref
from collections.abc import Coroutine, Iterator
from types import TracebackType
from typing import Any, TypeVar

from servd.client.aio import AsyncClient, Transport
from servd.client.job import AsyncJob, JobStatus

T = TypeVar("T")


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="servd-client", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` on the loop and wait for it; Ctrl-C (or any interruption) cancels it."""
        if threading.current_thread() is self.thread:
            work.close()
            raise RuntimeError("a servd Client was called from its own loop thread; use AsyncClient there")
        if self.loop.is_closed():
            work.close()
            raise RuntimeError("this servd Client is closed")
        future = asyncio.run_coroutine_threadsafe(work, self.loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise RuntimeError("this servd Client was closed while the call was waiting") from None
        except BaseException:
            future.cancel()
            raise

    @staticmethod
    def shutdown(loop_thread: _LoopThread, client: AsyncClient) -> None:
        """Close the client's connections on its loop, then stop the loop and its thread."""
        if loop_thread.loop.is_closed():
            return
        if threading.current_thread() is not loop_thread.thread:
            asyncio.run_coroutine_threadsafe(client.close(), loop_thread.loop).result(timeout=30)
            loop_thread.loop.call_soon_threadsafe(loop_thread.loop.stop)
            loop_thread.thread.join(timeout=30)
            if not loop_thread.thread.is_alive():
                loop_thread.loop.close()


class Client:
    """`Client("ws://127.0.0.1:8700", token=...)`: predict, submit, stream from plain Python.

    Same arguments as AsyncClient. Use it as a context manager, or call close().
    """

    def __init__(
        self,
        url: str = "ws://127.0.0.1:8700",
        token: str | None = None,
        *,
        transport: Transport = "ws",
        connect_timeout: float = 10.0,
        ping_interval_s: float | None = 20.0,
    ) -> None:
        self._client = AsyncClient(
            url, token, transport=transport, connect_timeout=connect_timeout, ping_interval_s=ping_interval_s
        )
        self._loop = _LoopThread()
        self._closer = weakref.finalize(self, _LoopThread.shutdown, self._loop, self._client)

    @property
    def url(self) -> str:
        return self._client.url

    def connect(self) -> None:
        """Open the websocket now (raises ConnectFailed, Unauthorized); calls do it when needed anyway."""
        self._loop.call(self._client.connect())

    def predict(
        self,
        endpoint: str,
        data: Any,
        timeout: float | None = None,
        *,
        priority: int | None = None,
        deadline_s: float | None = None,
    ) -> Any:
        """The result of `data` on `endpoint`, or the typed error; `timeout` cancels and raises Timeout.

        `priority` (1 = highest) and `deadline_s` (the server's deadline for this request) are
        sent only when given (AsyncClient.predict says more)."""
        work = self._client.predict(endpoint, data, timeout, priority=priority, deadline_s=deadline_s)
        return self._loop.call(work)

    def submit(self, endpoint: str, data: Any, *, priority: int | None = None, deadline_s: float | None = None) -> Job:
        """A Job, once the server admitted (status queued) or refused (`result()` raises) the request."""
        work = self._client.submit(endpoint, data, priority=priority, deadline_s=deadline_s)
        return Job(self._loop.call(work), self._loop)

    def stream(
        self, endpoint: str, data: Any, *, priority: int | None = None, deadline_s: float | None = None
    ) -> Iterator[Any]:
        """Partial results of a streaming endpoint as they come; leaving the loop early cancels it."""
        job = self.submit(endpoint, data, priority=priority, deadline_s=deadline_s)
        try:
            yield from job
        finally:
            if not job.done():
                job.cancel()

    def close(self) -> None:
        """Close the connection and stop the loop thread; jobs in flight fail with ConnectionLost."""
        self._closer()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class Job:
    """A submitted request: `status()`, `result(timeout)`, `cancel()`, `partials`, iteration."""

    def __init__(self, job: AsyncJob, loop: _LoopThread) -> None:
        self._job = job
        self._loop = loop

    def __repr__(self) -> str:
        return repr(self._job).replace("AsyncJob", "Job", 1)

    @property
    def id(self) -> str | int | None:
        return self._job.id

    @property
    def endpoint(self) -> str:
        return self._job.endpoint

    @property
    def partials(self) -> list[Any]:
        """The partial results received so far."""
        return list(self._job.partials)

    @property
    def timing(self) -> dict[str, Any] | None:
        """`{"queue_s", "run_s", "batch_size"}` once completed."""
        return self._job.timing

    def status(self) -> JobStatus:
        return self._job.status()

    def done(self) -> bool:
        return self._job.done()

    def result(self, timeout: float | None = None) -> Any:
        """The result, or the typed error; `timeout` bounds this wait only (raises Timeout)."""
        return self._loop.call(self._job.result(timeout))

    def cancel(self) -> None:
        self._loop.call(self._job.cancel())

    def __iter__(self) -> Iterator[Any]:
        """Every partial result, in order, as it comes; raises the job's error at the end."""
        index = 0
        while True:
            more, item = self._loop.call(self._job.partial_at(index))
            if not more:
                return
            yield item
            index += 1
