"""The HTTP transport: POST /v1/endpoints/{name}, as one JSON answer or as server-sent events.

Loop thread only. Each job is one request run by its own task; cancelling a job closes its
connection, which is how servd learns that an HTTP client gave up (it then cancels the
request). A task that ends without the job's terminal answer ends the job (Cancelled or
ConnectionLost), so no job outlives its request.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from servd import __version__
from servd.client._http import Connection, Pool, Response, Target
from servd.client.errors import Cancelled, ConnectFailed, ConnectionLost, QueueFull, ServdError, error_from_body
from servd.client.job import AsyncJob


def request_body(data_json: str, fields: str = "") -> bytes:
    """A POST /v1/endpoints/{name} body; `data_json` is the data as JSON text, `fields` more members or ""."""
    return f'{{"data":{data_json}{fields}}}'.encode()


class HttpTransport:
    def __init__(self, target: Target, headers: dict[str, str], connect_timeout: float) -> None:
        self.target = target
        self.headers = {"Host": target.netloc, "User-Agent": f"servd-client/{__version__}", **headers}
        self.pool = Pool(target, connect_timeout)
        self.tasks: set[asyncio.Task[None]] = set()

    async def submit(self, job: AsyncJob, data_json: str, fields: str = "", *, events: bool) -> None:
        """Start the request; `fields` are more body members as JSON text (`,"priority":1`), or ""."""
        task = asyncio.ensure_future(self._run(job, request_body(data_json, fields), events))
        job.transport_state = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(lambda done: _settle(job, done))

    async def cancel(self, job: AsyncJob) -> None:
        task = job.transport_state
        if isinstance(task, asyncio.Task) and not task.done():
            task.cancel()

    async def _run(self, job: AsyncJob, body: bytes, events: bool) -> None:
        accept = "text/event-stream" if events else "application/json"
        headers = {**self.headers, "Content-Type": "application/json", "Accept": accept}
        connection: Connection | None = None
        try:
            response = await self._request(self.target.endpoint_path(job.endpoint), headers, body)
            connection = response.connection
            if response.status == 200 and response.headers.get("content-type", "").startswith("text/event-stream"):
                await _follow(job, response)
            else:
                answer = await response.read()
                self.pool.release(connection)
                connection = None
                _answer(job, response, answer)
        except ServdError as exc:
            job.fail(exc)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            url = self.target.http_url(self.target.endpoint_path(job.endpoint))
            job.fail(ConnectionLost(f"HTTP connection to {url} dropped before the answer: {exc!r}"))
        finally:
            if connection is not None:
                connection.close()

    async def _request(self, path: str, headers: dict[str, str], body: bytes) -> Response:
        try:
            return await self.pool.request("POST", path, headers, body)
        except (OSError, asyncio.TimeoutError) as exc:
            if isinstance(exc, ConnectionResetError):
                raise
            raise ConnectFailed(f"cannot connect to {self.target.http_url('')}: {exc!r}") from None

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.pool.close()


async def _follow(job: AsyncJob, response: Response) -> None:
    """Apply each SSE event to the job until its terminal one; the stream ending first is a loss."""
    async for message in response.events():
        job.on_message(message)
        if job.done():
            return
    raise ConnectionResetError("the event stream ended before the request's terminal event")


def _answer(job: AsyncJob, response: Response, body: bytes) -> None:
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        parsed = body[:200].decode("utf-8", "replace")
    if response.status == 200 and isinstance(parsed, dict) and "data" in parsed:
        job.complete(parsed["data"], parsed.get("timing"))
        return
    error = error_from_body(parsed, response.status)
    if isinstance(error, QueueFull):
        retry_after = response.headers.get("retry-after", "")
        error.retry_after_s = float(retry_after) if retry_after.isdigit() else None
    job.fail(error)


def _settle(job: AsyncJob, task: asyncio.Task[None]) -> None:
    """The request's task is over: a job still open was cancelled (or its task failed)."""
    if job.done():
        return
    if task.cancelled():
        job.fail(Cancelled("cancelled by this client: its HTTP connection was closed, which cancels the request"))
    else:
        job.fail(ConnectionLost(f"the HTTP request ended without an answer: {task.exception()!r}"))
