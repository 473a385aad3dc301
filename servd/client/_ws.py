"""The websocket transport: every job of one client multiplexed over one /v1/ws connection.

Loop thread only. The connection opens on first use and again on the first use after it
dropped; a drop fails every job still in flight on it with ConnectionLost (the server has
cancelled them), so nothing waits forever. Jobs are submitted with progress on, which makes
the server answer each submit at once, in order (queued, or an error): an error the server
can't tie to an id (`too_large`, id null) therefore belongs to the oldest unanswered submit.

tornado is imported on first connect, not on `import servd.client`: the HTTP transport needs
only the standard library, and tornado.websocket pulls in tornado.web.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections import deque
from typing import TYPE_CHECKING, Any

from servd.client._http import Target
from servd.client._tensors import read_frame, submit_frame
from servd.client.errors import ConnectFailed, ConnectionLost, ServdError, error_from_body
from servd.client.job import AsyncJob

if TYPE_CHECKING:
    from tornado.httpclient import HTTPClientError
    from tornado.websocket import WebSocketClientConnection

TERMINAL = ("completed", "error")
MAX_MESSAGE_BYTES = 1 << 30  # what we accept from the server; servd's own limit is on what it accepts


def submit_text(request_id: int, endpoint: str, data_json: str, fields: str = "") -> str:
    """A submit message; `data_json` is the data as JSON text, `fields` more members (`,"priority":1`) or ""."""
    return f'{{"type":"submit","id":{request_id},"endpoint":{json.dumps(endpoint)},"data":{data_json}{fields}}}'


class Socket:
    """One open websocket and the jobs in flight on it."""

    def __init__(self, conn: WebSocketClientConnection, url: str) -> None:
        self.conn = conn
        self.url = url
        self.jobs: dict[int, AsyncJob] = {}
        self.unanswered: deque[AsyncJob] = deque()
        self.ids = itertools.count(1)
        self.closed = False
        self.reader = asyncio.ensure_future(self._read())

    async def submit(self, job: AsyncJob, data_json: str, fields: str = "") -> None:
        """Send the submit; `fields` are more members as JSON text (`,"priority":1`), or ""."""
        if self.closed:
            raise ConnectionLost(f"connection to {self.url} is closed")
        job.id = request_id = next(self.ids)
        self.jobs[request_id] = job
        self.unanswered.append(job)
        await self._write(submit_text(request_id, job.endpoint, data_json, fields))

    async def submit_arrays(self, job: AsyncJob, arrays: dict[str, Any], fields: str = "") -> None:
        """Send a dict of numpy arrays as one binary frame (an endpoint with tensors: takes it)."""
        if self.closed:
            raise ConnectionLost(f"connection to {self.url} is closed")
        request_id = next(self.ids)
        frame = submit_frame(request_id, job.endpoint, arrays, fields)  # a ValueError sends nothing
        job.id = request_id
        self.jobs[request_id] = job
        self.unanswered.append(job)
        await self._write(frame)

    async def cancel(self, job: AsyncJob) -> None:
        if not self.closed and isinstance(job.id, int) and self.jobs.get(job.id) is job:
            await self._write(json.dumps({"type": "cancel", "id": job.id}))

    async def _write(self, text: str | bytes) -> None:
        from tornado.iostream import StreamClosedError
        from tornado.websocket import WebSocketClosedError

        try:
            await self.conn.write_message(text, binary=isinstance(text, bytes))
        except (WebSocketClosedError, StreamClosedError):
            self._lost()

    async def _read(self) -> None:
        try:
            while True:
                text = await self.conn.read_message()
                if text is None:
                    return
                if isinstance(text, str):
                    self._dispatch(json.loads(text))
                else:  # a binary completed frame: the outputs as numpy arrays
                    self._dispatch(read_frame(text))
        finally:
            self._lost()

    def _dispatch(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        job = self.jobs.get(request_id) if isinstance(request_id, int) else None
        if job is None and request_id is None and message.get("type") == "error" and self.unanswered:
            job = self.unanswered[0]
        if job is None:
            return  # a message for a job that already ended (none are expected)
        if self.unanswered and self.unanswered[0] is job:
            self.unanswered.popleft()
        job.on_message(message)
        key = job.id
        if job.done() and isinstance(key, int) and self.jobs.get(key) is job:
            del self.jobs[key]

    def _lost(self, why: str | None = None) -> None:
        """The connection is gone: every job still on it fails with ConnectionLost."""
        if self.closed and not self.jobs:
            return
        self.closed = True
        code, reason = self.conn.close_code, self.conn.close_reason
        if why is None:
            why = "closed" if code is None else f"closed ({code} {reason or ''}".rstrip() + ")"
        for request_id, job in list(self.jobs.items()):
            error = ConnectionLost(f"connection to {self.url} {why} before request {request_id} ended")
            error.close_code, error.close_reason = code, reason
            job.fail(error)
        self.jobs.clear()
        self.unanswered.clear()
        self.conn.close()  # a no-op on the wire by now; releases tornado's side of the connection

    async def close(self, wait_s: float = 2.0) -> None:
        """Close cleanly: send the close frame and wait (bounded) for the server's reply."""
        self.conn.close(1000, "client closed")
        self._lost("closed by this client")
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self.reader), wait_s)


class WsTransport:
    def __init__(
        self, target: Target, headers: dict[str, str], connect_timeout: float, ping_interval_s: float | None
    ) -> None:
        self.target = target
        self.headers = headers
        self.connect_timeout = connect_timeout
        self.ping_interval_s = ping_interval_s
        self.socket: Socket | None = None
        self._connecting: asyncio.Lock | None = None

    async def connect(self) -> Socket:
        """The open socket, opening a new one if there is none or the last one dropped."""
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self.socket is None or self.socket.closed:
                self.socket = await self._open()
            return self.socket

    async def _open(self) -> Socket:
        from tornado.httpclient import HTTPClientError, HTTPRequest
        from tornado.iostream import StreamClosedError
        from tornado.websocket import websocket_connect

        url = self.target.ws_url()
        timeout = self.connect_timeout  # bounds the upgrade too, not just the TCP connect
        request = HTTPRequest(url, headers=self.headers, connect_timeout=timeout, request_timeout=timeout)
        try:
            conn = await websocket_connect(
                request,
                ping_interval=self.ping_interval_s,
                ping_timeout=self.ping_interval_s,
                max_message_size=MAX_MESSAGE_BYTES,
            )
        except HTTPClientError as exc:
            raise _refusal(url, exc) from None
        except (OSError, StreamClosedError, asyncio.TimeoutError) as exc:
            raise ConnectFailed(f"cannot connect to {url}: {exc or type(exc).__name__}") from None
        return Socket(conn, url)

    async def submit(self, job: AsyncJob, data_json: str, fields: str = "") -> None:
        socket = await self.connect()
        job.transport_state = socket
        await socket.submit(job, data_json, fields)

    async def submit_arrays(self, job: AsyncJob, arrays: dict[str, Any], fields: str = "") -> None:
        socket = await self.connect()
        job.transport_state = socket
        await socket.submit_arrays(job, arrays, fields)

    async def cancel(self, job: AsyncJob) -> None:
        socket = job.transport_state
        if isinstance(socket, Socket):
            await socket.cancel(job)

    async def close(self) -> None:
        socket, self.socket = self.socket, None
        if socket is not None:
            await socket.close()


def _refusal(url: str, exc: HTTPClientError) -> ServdError:
    """A refused upgrade (401, 404, ...) as the typed error, with the server's message when it sent one."""
    if exc.code == 599:  # tornado's code for "no HTTP answer": connect timeout, reset
        return ConnectFailed(f"cannot connect to {url}: {exc.message}")
    body = exc.response.body if exc.response is not None else b""
    with contextlib.suppress(ValueError):
        answer = json.loads(body or b"null")
        if isinstance(answer, dict) and "error" in answer:
            return error_from_body(answer, exc.code)
    return ServdError(f"websocket upgrade refused: HTTP {exc.code} {exc.message}", code="bad_response", status=exc.code)
