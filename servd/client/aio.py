"""AsyncClient: servd's API from asyncio code, over one multiplexed websocket or over HTTP/SSE.

Loop-bound: use one AsyncClient from the event loop it first ran on. The connection opens on
first use and reopens on the first use after it dropped; jobs in flight on a dropped connection
fail with ConnectionLost.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Coroutine
from types import TracebackType
from typing import Any, Literal

from servd.client._http import Target
from servd.client._http_transport import HttpTransport
from servd.client._tensors import as_json, is_arrays
from servd.client._ws import WsTransport
from servd.client.errors import Timeout
from servd.client.job import AsyncJob

Transport = Literal["ws", "http"]


class AsyncClient:
    """`AsyncClient("ws://127.0.0.1:8700", token=...)`; `transport="http"` where websockets are blocked.

    `connect_timeout` bounds opening a connection; `ping_interval_s` makes the client ping the
    server and drop (failing its jobs) a connection that stops answering (None: never).
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
        if transport not in ("ws", "http"):
            raise ValueError(f"transport must be 'ws' or 'http', got {transport!r}")
        self.url = url
        self.transport = transport
        target = Target.parse(url)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._ws = WsTransport(target, headers, connect_timeout, ping_interval_s) if transport == "ws" else None
        self._http = HttpTransport(target, headers, connect_timeout) if transport == "http" else None
        self._background: set[asyncio.Future[None]] = set()

    async def connect(self) -> None:
        """Open the websocket now (raises ConnectFailed, Unauthorized); calls do it when needed anyway."""
        if self._ws is not None:
            await self._ws.connect()

    async def predict(
        self,
        endpoint: str,
        data: Any,
        timeout: float | None = None,
        *,
        priority: int | None = None,
        deadline_s: float | None = None,
    ) -> Any:
        """Run `data` through `endpoint` and return the result, or raise the typed error.

        `timeout` (seconds) bounds the wait on this side: when it runs out the request is
        cancelled on the server and Timeout is raised. `priority` (1 = the endpoint's highest
        level) and `deadline_s` (the server ends the request with Timeout when it passes, and
        `queue.admit: predicted` refuses with QueueFull what can't make it) are sent only when
        given; see `scheduling_fields`.
        """
        job = await self._start(endpoint, data, events=False, fields=scheduling_fields(priority, deadline_s))
        try:
            return await job.result(timeout)
        except Timeout:
            if job.done():
                raise
            await job.cancel()
            raise Timeout(f"no result within {timeout}s (client-side timeout); the request was cancelled") from None
        except asyncio.CancelledError:
            self._in_background(job.cancel())
            raise

    async def submit(
        self, endpoint: str, data: Any, *, priority: int | None = None, deadline_s: float | None = None
    ) -> AsyncJob:
        """Submit and return the job once the server answered: admitted (queued) or refused (done).

        A refusal is not raised here: `job.result()` raises it, like any other failure.
        `priority` and `deadline_s` as for `predict`.
        """
        job = await self._start(endpoint, data, events=True, fields=scheduling_fields(priority, deadline_s))
        await job.answered()
        return job

    async def stream(
        self, endpoint: str, data: Any, *, priority: int | None = None, deadline_s: float | None = None
    ) -> AsyncIterator[Any]:
        """Partial results of a streaming (generator) endpoint as they come; raises the typed error.

        Leaving the loop early cancels the request. `priority` and `deadline_s` as for `predict`.
        """
        job = await self.submit(endpoint, data, priority=priority, deadline_s=deadline_s)
        try:
            async for partial in job:
                yield partial
        finally:
            if not job.done():
                await job.cancel()

    async def close(self) -> None:
        """Close the connection; jobs still in flight fail with ConnectionLost (HTTP: Cancelled)."""
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- internals -------------------------------------------------------------------------

    async def _start(self, endpoint: str, data: Any, *, events: bool, fields: str = "") -> AsyncJob:
        if not isinstance(endpoint, str) or not endpoint:
            raise ValueError(f"endpoint must be a non-empty string, got {endpoint!r}")
        job = AsyncJob(endpoint, self._cancel)
        if self._ws is not None and is_arrays(data):  # numpy arrays: one binary frame
            await self._ws.submit_arrays(job, data, fields)
            return job
        data_json = json.dumps(as_json(data), allow_nan=False, separators=(",", ":"))
        if self._ws is not None:
            await self._ws.submit(job, data_json, fields)
        elif self._http is not None:
            await self._http.submit(job, data_json, fields, events=events)
        return job

    async def _cancel(self, job: AsyncJob) -> None:
        if self._ws is not None:
            await self._ws.cancel(job)
        elif self._http is not None:
            await self._http.cancel(job)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def scheduling_fields(priority: int | None, deadline_s: float | None) -> str:
    """The optional scheduling members of a submit or HTTP body, as JSON text to follow `data`
    (`,"priority":1,"deadline_s":0.5`); "" when neither is given, so older servers see nothing new.

    Checked here as the server checks them (ValueError before anything is sent): `priority` an
    integer >= 0 (1 is the highest level, 0 = the endpoint's default), `deadline_s` a finite
    number of seconds > 0. Whether the level exists, or the token may use it, only the server
    knows: it answers BadRequest.
    """
    text = ""
    if priority is not None:
        if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
            raise ValueError(
                f"priority must be an integer >= 0 (1 is the highest level, 0 = the default), got {priority!r}"
            )
        text += f',"priority":{priority}'
    if deadline_s is not None:
        ok = isinstance(deadline_s, (int, float)) and not isinstance(deadline_s, bool)
        if not ok or not math.isfinite(deadline_s) or deadline_s <= 0:
            raise ValueError(f"deadline_s must be a number of seconds > 0, got {deadline_s!r}")
        text += f',"deadline_s":{float(deadline_s)!r}'
    return text
