"""POST /v1/endpoints/{name}: the same queue over HTTP, as one JSON answer or as SSE.

The body is streamed in so that a too-large one is refused from its Content-Length, before
it is read or parsed. A client that hangs up cancels its request.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tornado.iostream import StreamClosedError
from tornado.web import stream_request_body

from servd.core.request import Completed, Request, Terminal
from servd.daemon import auth
from servd.errors import ErrorCode, ServdError
from servd.protocols import ws_messages as protocol
from servd.web import compat
from servd.web.handlers.base import JSONHandler, error_body
from servd.web.snapshot import endpoint_snapshot


@stream_request_body
class EndpointHTTP(JSONHandler):
    def initialize(self, daemon: Any) -> None:
        super().initialize(daemon)
        self.body = bytearray()
        self.too_large = False  # answered 413 while the body was still arriving
        self.request_record: Request | None = None
        self.outcome: asyncio.Future[Terminal] | None = None
        self.streaming = False

    def prepare(self) -> None:
        super().prepare()
        if compat.response_finished(self) or self.request.method != "POST":
            return
        limit = self.daemon.spec.server.max_message_bytes
        declared = self.request.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > limit:
            self._refuse(ServdError(ErrorCode.TOO_LARGE, f"body is {declared} bytes; server.max_message_bytes={limit}"))

    def data_received(self, chunk: bytes) -> None:
        if self.too_large or self.request.method != "POST":  # only a POST's body is read
            return
        limit = self.daemon.spec.server.max_message_bytes
        if len(self.body) + len(chunk) > limit:
            self.body = bytearray()
            self._answer_too_large(limit)
            return
        self.body += chunk

    def _answer_too_large(self, limit: int) -> None:
        """A body without Content-Length (chunked) that grows past the limit: the whole 413 goes out
        at once, so a client that reads while it sends (curl, browsers) stops; the rest is read and
        dropped, since closing on unread data resets the connection, which can lose the answer.
        The request ends when the body does (`post`); past twice the limit Tornado closes anyway."""
        self.too_large = True
        error = ServdError(ErrorCode.TOO_LARGE, f"body is over {limit} bytes; server.max_message_bytes={limit}")
        self.daemon.note_rejected(self.path_kwargs.get("name"), error)
        body = error_body(error.code, error.message).encode()
        self.set_status(error.code.http_status)
        self.set_header("Content-Length", len(body))
        self.set_header("Connection", "close")
        self.write(body)
        self.flush()

    def get(self, name: str) -> None:
        """One endpoint's effective config and live stats."""
        try:
            self.check_auth()
            endpoint = self.daemon.endpoint(name)
        except ServdError as exc:
            return self.send_error_code(exc)
        self.send_json(endpoint_snapshot(endpoint))

    async def post(self, name: str) -> None:
        if self.too_large:  # answered already; the body it was still reading has ended
            self.finish()
        if compat.response_finished(self):
            return
        try:
            request = self._admit(name)
        except ServdError as exc:
            return self._refuse(exc, name)
        self.request_record = request
        await self.outcome  # type: ignore[misc]  # end() has answered; keep Tornado from finishing first

    def _admit(self, name: str) -> Request:
        token = self.check_auth()
        endpoint = self.daemon.endpoint(name)
        if not endpoint.spec.api_open:
            raise ServdError(ErrorCode.API_CLOSED, f"endpoint {name!r} has api_open: false; use its websocket queue")
        body = self._body()
        self.streaming = "text/event-stream" in self.request.headers.get("Accept", "")
        self.outcome = asyncio.get_running_loop().create_future()
        client = auth.client_key(self.request, token)
        request = Request(self.daemon.next_http_id(), client, body["data"], self, progress=self.streaming)
        request.size = len(self.body)
        request.priority, request.deadline_s = self._scheduling(body)
        request.highest_priority = auth.highest_priority(token, self.daemon.tokens)
        # a refusal raises here, before anything is sent: over SSE too it is a plain status and JSON
        # body; only what happens after admission arrives as events (with the request's id)
        self.daemon.admit(name, request)
        if self.streaming:
            self.start_event_stream()
        return request

    def _scheduling(self, body: dict[str, Any]) -> tuple[int, float | None]:
        try:
            return protocol.scheduling(body)
        except ValueError as exc:
            raise ServdError(ErrorCode.BAD_REQUEST, str(exc)) from None

    def _body(self) -> dict[str, Any]:
        raw = bytes(self.body) or b"null"
        try:
            body = protocol.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ServdError(ErrorCode.BAD_REQUEST, f"body is not valid JSON: {exc}") from None
        if not isinstance(body, dict) or "data" not in body:
            raise ServdError(ErrorCode.BAD_REQUEST, 'body must be a JSON object {"data": ...}')
        too_deep = protocol.depth_problem(body["data"], raw, self.daemon.spec.server.max_depth)
        if too_deep is not None:
            raise ServdError(ErrorCode.BAD_REQUEST, too_deep)
        return body

    def _refuse(self, error: ServdError, name: str | None = None) -> None:
        self.send_error_code(error, self.note_refusal(name, error))

    def _respond(self, terminal: Terminal) -> None:
        if isinstance(terminal, Completed):
            timing = protocol.timing(terminal.queue_s, terminal.run_s, terminal.batch_size)
            self.send_json(f'{{"data":{terminal.data_json},"timing":{timing}}}')
        else:
            self.send_error_code(ServdError(terminal.code, terminal.message))

    # -- server-sent events ------------------------------------------------------------------

    def _event(self, kind: str, message: str) -> None:
        self.start_event_stream()
        try:
            self.write(f"event: {kind}\ndata: {message}\n\n")
            self.flush()
        except StreamClosedError:
            pass

    # -- Sink ------------------------------------------------------------------------------

    def send(self, request: Request, message: str) -> None:
        if self.streaming and not compat.response_finished(self):
            self._event(protocol.message_type(message), message)

    def end(self, request: Request, terminal: Terminal) -> None:
        if self.streaming and not compat.response_finished(self):
            self._event(
                "completed" if isinstance(terminal, Completed) else "error", protocol.terminal(request.id, terminal)
            )
            self.finish()
        elif not compat.response_finished(self):
            # Answer now, not when post() resumes: a drain ends requests and closes connections in
            # one go, and a reply written later would meet a closed connection.
            self._respond(terminal)
        if self.outcome is not None and not self.outcome.done():
            self.outcome.set_result(terminal)

    def on_connection_close(self) -> None:
        super().on_connection_close()  # ends Tornado's wait for a body that will never arrive
        request = self.request_record
        if request is not None and not request.done:
            self.daemon.cancel(request, "the client disconnected")
