"""AsyncJob: one submitted request, fed by its transport's messages; JobStatus: where it stands.

Loop thread only (the sync Client reads `status()` and `partials` from other threads, which
only ever see a whole JobStatus object or a list being appended to). A job ends exactly once:
with the server's completed/error message, or with ConnectionLost when its connection closed
first, so waiting on it never hangs past the connection's life.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from servd.client.errors import ServdError, Timeout, error_from_body

PENDING, QUEUED, RUNNING, DONE = "pending", "queued", "running", "done"


@dataclass(frozen=True)
class JobStatus:
    """`state` is pending (sent, not yet answered), queued, running or done.

    While queued: `rank` (0 = next to run), `queue_size` and `eta_s` (None until the endpoint
    has timed a call). Once done: `outcome` is "completed" or the error code.
    """

    state: str
    rank: int | None = None
    queue_size: int | None = None
    eta_s: float | None = None
    outcome: str | None = None


class AsyncJob:
    def __init__(self, endpoint: str, canceller: Callable[[AsyncJob], Awaitable[None]]) -> None:
        self.endpoint = endpoint
        self.id: str | int | None = None  # the wire id: ours on the websocket, the server's http-N over SSE
        self.partials: list[Any] = []
        self.timing: dict[str, Any] | None = None
        self.transport_state: Any = None  # the transport's handle: its socket, or its HTTP task
        self._status = JobStatus(PENDING)
        self._canceller = canceller
        self._data: Any = None
        self._error: ServdError | None = None
        self._finished = asyncio.Event()
        self._answered = asyncio.Event()
        self._changed: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<AsyncJob {self.endpoint} id={self.id!r} {self._status.state}>"

    # -- what callers use ------------------------------------------------------------------

    def status(self) -> JobStatus:
        return self._status

    def done(self) -> bool:
        return self._finished.is_set()

    async def result(self, timeout: float | None = None) -> Any:
        """The result; raises the typed error. `timeout` only bounds this wait (raises Timeout,
        the job goes on; `cancel()` stops it)."""
        if not self._finished.is_set():
            try:
                await asyncio.wait_for(self._finished.wait(), timeout)
            except asyncio.TimeoutError:
                raise Timeout(
                    f"no result within {timeout}s (client-side wait); the job is still {self._status.state}"
                ) from None
        if self._error is not None:
            raise self._error.with_traceback(None)
        return self._data

    async def cancel(self) -> None:
        """Ask the server to cancel; the job then ends with Cancelled (or its result, if it won the race)."""
        if not self.done():
            await self._canceller(self)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        """Every partial result in order (those already received first); raises the job's error at the end."""
        index = 0
        while True:
            more, item = await self.partial_at(index)
            if not more:
                return
            yield item
            index += 1

    async def partial_at(self, index: int) -> tuple[bool, Any]:
        """(True, partial number `index`) once it arrived; (False, None) when the job completed without it."""
        while index >= len(self.partials) and not self.done():
            await self._wait_change()
        if index < len(self.partials):
            return True, self.partials[index]
        if self._error is not None:
            raise self._error.with_traceback(None)
        return False, None

    async def answered(self) -> None:
        """Until the server's first answer: admitted (queued) or refused (done)."""
        await self._answered.wait()

    # -- what transports call --------------------------------------------------------------

    def on_message(self, message: dict[str, Any]) -> None:
        """Apply one server message (websocket frame or SSE event) to this job."""
        kind = message.get("type")
        if self.id is None and message.get("id") is not None:
            self.id = message["id"]
        if kind in (QUEUED, "estimation"):
            self._set(JobStatus(QUEUED, message.get("rank"), message.get("queue_size"), message.get("eta_s")))
        elif kind == "started":
            self._set(JobStatus(RUNNING))
        elif kind == "partial":
            self.partials.append(message.get("data"))
            self._set(self._status)
        elif kind == "completed":
            self.complete(message.get("data"), message.get("timing"))
        elif kind == "error":
            self.fail(error_from_body(message))

    def complete(self, data: Any, timing: dict[str, Any] | None) -> None:
        if self.done():
            return
        self._data = data
        self.timing = timing
        self._end(JobStatus(DONE, outcome="completed"))

    def fail(self, error: ServdError) -> None:
        if self.done():
            return
        self._error = error
        self._end(JobStatus(DONE, outcome=error.code))

    def _end(self, status: JobStatus) -> None:
        self._finished.set()
        self._set(status)

    def _set(self, status: JobStatus) -> None:
        self._status = status
        self._answered.set()
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = None

    async def _wait_change(self) -> None:
        if self._changed is None:
            self._changed = asyncio.get_running_loop().create_future()
        await self._changed
