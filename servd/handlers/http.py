"""POST /v1/endpoints/{name}: the same queue over HTTP, as one JSON answer or as SSE.

The body is streamed in so that a too-large one is refused from its Content-Length, before
it is read or parsed. A client that hangs up cancels its request.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from tornado.iostream import StreamClosedError
from tornado.web import stream_request_body

from servd import auth, protocol
from servd.errors import ErrorCode, ServdError
from servd.handlers.base import JSONHandler
from servd.request import Completed, Request, Terminal


@stream_request_body
class EndpointHTTP(JSONHandler):
    def initialize(self, daemon: Any) -> None:
        super().initialize(daemon)
        self.body = bytearray()
        self.too_large = False
        self.request_record: Request | None = None
        self.outcome: asyncio.Future[Terminal] | None = None
        self.streaming = False

    def prepare(self) -> None:
        if self.request.method != "POST":
            return
        limit = self.daemon.spec.server.max_message_bytes
        declared = self.request.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            self.too_large = True
            self._refuse(ServdError(ErrorCode.TOO_LARGE, f"body is {declared} bytes; server.max_message_bytes={limit}"))

    def data_received(self, chunk: bytes) -> None:
        if self.too_large:
            return
        if len(self.body) + len(chunk) > self.daemon.spec.server.max_message_bytes:
            self.too_large = True
            self.body = bytearray()
            return
        self.body += chunk

    def get(self, name: str) -> None:
        """One endpoint's effective config and live stats."""
        try:
            self.check_auth()
            endpoint = self.daemon.endpoint(name)
        except ServdError as exc:
            return self.send_error_code(exc)
        self.send_json(endpoint.snapshot())

    async def post(self, name: str) -> None:
        if self._finished:
            return
        try:
            request = self._admit(name)
        except ServdError as exc:
            return self._refuse(exc, name)
        self.request_record = request
        terminal = await self.outcome  # type: ignore[misc]
        if not self.streaming:
            self._respond(terminal)

    def _admit(self, name: str) -> Request:
        token = self.check_auth()
        endpoint = self.daemon.endpoint(name)
        if not endpoint.spec.api_open:
            raise ServdError(ErrorCode.API_CLOSED, f"endpoint {name!r} has api_open: false; use its websocket queue")
        limit = self.daemon.spec.server.max_message_bytes
        if self.too_large:
            raise ServdError(ErrorCode.TOO_LARGE, f"body is over server.max_message_bytes={limit}")
        data = self._data()
        self.streaming = "text/event-stream" in self.request.headers.get("Accept", "")
        self.outcome = asyncio.get_running_loop().create_future()
        request = Request(
            self.daemon.next_http_id(), auth.client_key(self.request, token), data, self, progress=self.streaming
        )
        if self.streaming:
            self._start_stream()
        self.daemon.admit(name, request)
        return request

    def _data(self) -> Any:
        try:
            body = protocol.loads(bytes(self.body) or b"null")
        except (ValueError, RecursionError) as exc:
            raise ServdError(ErrorCode.BAD_REQUEST, f"body is not valid JSON: {exc}") from None
        if not isinstance(body, dict) or "data" not in body:
            raise ServdError(ErrorCode.BAD_REQUEST, 'body must be a JSON object {"data": ...}')
        return body["data"]

    def _refuse(self, error: ServdError, name: str | None = None) -> None:
        self.daemon.note_rejected(name, error)
        if self.streaming and self._headers_written:
            self._event("error", protocol.error(None, error.code, error.message))
            self.finish()
            return
        headers = {}
        if error.code is ErrorCode.QUEUE_FULL and name in self.daemon.endpoints:
            eta = self.daemon.endpoints[name].eta_for_new()
            headers["Retry-After"] = str(max(1, math.ceil(eta or 1)))
        self.send_error_code(error, headers)

    def _respond(self, terminal: Terminal) -> None:
        if isinstance(terminal, Completed):
            timing = protocol.timing(terminal.queue_s, terminal.run_s, terminal.batch_size)
            self.send_json(f'{{"data":{terminal.data_json},"timing":{timing}}}')
        else:
            self.send_error_code(ServdError(terminal.code, terminal.message))

    # -- server-sent events ------------------------------------------------------------------

    def _start_stream(self) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("X-Accel-Buffering", "no")  # nginx: don't buffer the stream
        self.flush()

    def _event(self, kind: str, message: str) -> None:
        try:
            self.write(f"event: {kind}\ndata: {message}\n\n")
            self.flush()
        except StreamClosedError:
            pass

    # -- Sink ------------------------------------------------------------------------------

    def send(self, request: Request, message: str) -> None:
        if self.streaming and not self._finished:
            self._event(protocol.message_type(message), message)

    def end(self, request: Request, terminal: Terminal) -> None:
        if self.streaming and not self._finished:
            self._event(
                "completed" if isinstance(terminal, Completed) else "error", protocol.terminal(request.id, terminal)
            )
            self.finish()
        if self.outcome is not None and not self.outcome.done():
            self.outcome.set_result(terminal)

    def on_connection_close(self) -> None:
        request = self.request_record
        if request is not None and not request.done:
            request.endpoint.cancel(request, "the client disconnected")
