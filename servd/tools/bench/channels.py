"""One bench client's connection: send a request, wait for its one answer, say what it was.

The messages are the client library's own (`servd.client._ws.submit_text`,
`servd.client._http_transport.request_body`, `servd.client._tensors.submit_frame`), so the bench
measures what a client sends; only the reading differs: a bench channel has one request in
flight and wants just its outcome code and `timing`. A closed connection with a request in
flight raises `Lost`. Loop thread only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from servd.client._http import Pool, Target
from servd.client._http_transport import request_body
from servd.client._tensors import submit_frame
from servd.client._ws import submit_text
from servd.client.errors import ConnectFailed, error_from_body
from servd.tools.bench.options import Options

CONNECT_CHUNK = 32  # connections opened at once, to stay under the server's listen backlog
CLOSE_WAIT_S = 2.0  # for the server's answer to a close frame, at the end of a level
NO_PROGRESS = ',"progress":false'  # one answer per request: the bench reads only the terminal one


class Lost(Exception):
    """The connection closed with a request in flight."""


class WsChannel:
    def __init__(self, conn: Any, options: Options) -> None:
        self.conn = conn
        self.next_id = 0
        self.endpoint = options.endpoint
        self.data_json = options.data_json
        self.arrays = options.arrays
        self.fields = {level: fields + NO_PROGRESS for level, fields in options.fields().items()}

    @classmethod
    async def open(cls, options: Options) -> WsChannel:
        from tornado.httpclient import HTTPClientError, HTTPRequest
        from tornado.websocket import websocket_connect

        from servd.client._ws import _refusal

        url = Target.parse(options.url).ws_url()
        headers = {"Authorization": f"Bearer {options.token}"} if options.token else {}
        timeout = options.connect_timeout_s
        request = HTTPRequest(url, headers=headers, connect_timeout=timeout, request_timeout=timeout)
        try:
            conn = await websocket_connect(request, max_message_size=1 << 30)
        except HTTPClientError as exc:
            raise _refusal(url, exc) from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {url}: {exc}") from None
        return cls(conn, options)

    async def call(self, priority: int | None = None) -> tuple[str, dict[str, Any] | None]:
        from tornado.websocket import WebSocketClosedError

        self.next_id += 1
        request_id = self.next_id
        if self.arrays is not None:  # one binary frame (docs/protocols/websocket.md: Binary frames)
            message_out: str | bytes = submit_frame(request_id, self.endpoint, self.arrays, self.fields[priority])
        else:
            message_out = submit_text(request_id, self.endpoint, self.data_json, self.fields[priority])
        try:
            await self.conn.write_message(message_out, binary=isinstance(message_out, bytes))
        except WebSocketClosedError:
            raise Lost from None
        while True:
            text = await self.conn.read_message()
            if text is None:
                raise Lost
            message = json.loads(text if isinstance(text, str) else text[4 : 4 + int.from_bytes(text[:4], "little")])
            if message.get("id") not in (request_id, None):
                continue  # an answer to an earlier request that was counted as lost
            if message.get("type") == "completed":
                return "completed", message.get("timing")
            return error_from_body(message).code, None

    def close(self) -> None:
        self.conn.close()

    async def aclose(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Close, and read until the server's close (bounded): a socket still open when the loop
        ends is left to the garbage collector, a ResourceWarning where bench runs in-process."""
        self.conn.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._read_to_close(), wait_s)

    async def _read_to_close(self) -> None:
        while await self.conn.read_message() is not None:
            pass


class HttpChannel:
    def __init__(self, options: Options) -> None:
        target = Target.parse(options.url)
        self.pool = Pool(target, options.connect_timeout_s)
        self.path = target.endpoint_path(options.endpoint)
        self.bodies = {level: request_body(options.data_json, fields) for level, fields in options.fields().items()}
        self.headers = {"Host": target.netloc, "Content-Type": "application/json"}
        if options.token:
            self.headers["Authorization"] = f"Bearer {options.token}"

    @classmethod
    async def open(cls, options: Options) -> HttpChannel:
        return cls(options)

    async def call(self, priority: int | None = None) -> tuple[str, dict[str, Any] | None]:
        try:
            response = await self.pool.request("POST", self.path, self.headers, self.bodies[priority])
            body = await response.read()
        except (OSError, asyncio.IncompleteReadError) as exc:
            if isinstance(exc, ConnectionRefusedError):
                raise ConnectFailed(f"cannot connect: {exc}") from None
            raise Lost from None
        self.pool.release(response.connection)
        try:
            answer = json.loads(body)
        except ValueError:
            return f"http_{response.status}", None
        if response.status == 200:
            return "completed", answer.get("timing")
        return error_from_body(answer, response.status).code, None

    def close(self) -> None:
        for connection in self.pool.idle:
            connection.close()
        self.pool.idle.clear()

    async def aclose(self) -> None:
        await self.pool.close()


Channel = WsChannel | HttpChannel


async def open_channel(options: Options) -> Channel:
    if options.transport == "http":
        return await HttpChannel.open(options)
    return await WsChannel.open(options)


async def connect_all(options: Options, count: int) -> list[Channel]:
    """`count` open channels, or none and the first error (the ones that did open are closed)."""
    channels: list[Channel] = []
    for first in range(0, count, CONNECT_CHUNK):
        chunk = range(first, min(count, first + CONNECT_CHUNK))
        opened = await asyncio.gather(*(open_channel(options) for _ in chunk), return_exceptions=True)
        channels += [c for c in opened if isinstance(c, (WsChannel, HttpChannel))]
        failure = next((e for e in opened if isinstance(e, BaseException)), None)
        if failure is not None:
            await asyncio.gather(*(channel.aclose() for channel in channels))
            raise failure
    return channels
