"""Websocket queue: /v1/ws (any endpoint) and /v1/endpoints/{name}/ws (one endpoint).

One connection carries many requests. The connection is the Sink of its requests: it writes
their messages, and when it closes it cancels whatever they still have queued or running.
A client that doesn't read its messages is cut off once its unsent output passes
server.max_client_buffer_bytes, so it can't grow the server's buffers or stall anyone.
"""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Any

from tornado.iostream import StreamBufferFullError, StreamClosedError
from tornado.web import stream_request_body
from tornado.websocket import WebSocketClosedError, WebSocketHandler, WebSocketProtocol

from servd.core.events import Completed, Progress, Terminal
from servd.core.request import Request
from servd.daemon import auth
from servd.errors import ErrorCode, ServdError
from servd.inputs import tensors
from servd.protocols import frames
from servd.protocols import ws_messages as protocol
from servd.web import guard as webguard
from servd.web.compat import buffered, fast_send_supported, send_text
from servd.web.handlers.base import SERVD_ERRORS, error_answer, write_wire_error

if TYPE_CHECKING:
    from servd.daemon.daemon import Daemon

SLOW_READER_CLOSE = 1008  # policy violation


@stream_request_body  # a handshake has no body: one is refused at the headers, never buffered
class QueueSocket(WebSocketHandler):
    daemon: Daemon

    def initialize(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.fixed_endpoint: str | None = None
        self.in_flight: dict[str | int, Request] = {}
        self.client = ""
        self.highest_priority = 1  # what the connection's token allows (tokens_file), settled at the handshake
        self.gone = False
        self.direct_send: bool | None = None

    def prepare(self) -> None:
        """A request with a body is no websocket handshake: refused before any of it is read (Tornado
        would otherwise hold up to twice max_message_bytes of it before get() checks anything)."""
        headers = self.request.headers
        if self.request.method != "GET":
            return  # answered 405 by Tornado; a body it carries is read and dropped (data_received)
        if headers.get("Content-Length", "0") not in ("", "0") or "Transfer-Encoding" in headers:
            self._refuse(ErrorCode.BAD_REQUEST, "a websocket handshake has no body")

    def data_received(self, chunk: bytes) -> None:
        """Nothing: a request with a body was refused in prepare()."""

    def get_websocket_protocol(self) -> WebSocketProtocol | None:
        """Tornado's protocol, reading through BufferedFrames where Tornado has the method it overrides."""
        return buffered(super().get_websocket_protocol())

    async def get(self, *args: Any, **kwargs: Any) -> None:
        """Refuse before the upgrade: Host or Origin not allowed (421, 403), not a websocket handshake
        (400), wrong token (401), unknown endpoint (404), full or draining (503)."""
        headers = self.request.headers
        refused = webguard.refusal(self.daemon.spec.server, headers.get("Host"), headers.get("Origin"))
        if refused is not None:
            return self._refuse(refused.code, refused.message)
        if headers.get("Upgrade", "").lower() != "websocket":
            return self._refuse(ErrorCode.BAD_REQUEST, "this is a websocket route; open it with a websocket handshake")
        token = auth.presented_token(self.request)
        if not auth.is_valid(token, self.daemon.tokens):
            return self._refuse(
                ErrorCode.UNAUTHORIZED, "a valid bearer token is required (Authorization: Bearer <token> or ?token=)"
            )
        name = kwargs.get("name")
        if name is not None and name not in self.daemon.endpoints:
            return self._refuse(ErrorCode.UNKNOWN_ENDPOINT, f"no endpoint {name!r}")
        limit = self.daemon.spec.server.max_connections
        if len(self.daemon.connections) >= limit:
            return self._refuse(ErrorCode.UNAVAILABLE, f"server.max_connections={limit} reached; retry later")
        if self.daemon.shutting_down:
            return self._refuse(ErrorCode.UNAVAILABLE, "the daemon is shutting down")
        self.fixed_endpoint = name
        self.client = auth.client_key(self.request, token)
        self.highest_priority = auth.highest_priority(token, self.daemon.tokens)
        await super().get(*args, **kwargs)

    def _refuse(self, code: ErrorCode, message: str) -> None:
        error = ServdError(code, message)
        self.daemon.note_rejected(None, error)
        self.finish(error_answer(self, SERVD_ERRORS, error))  # an HTTP answer: the HTTP error shape

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        """The subprotocol `servd` when offered (the console offers it beside its token, as
        auth.TOKEN_SUBPROTOCOL): browsers drop a connection whose offer gets no answer. Never the token's."""
        return auth.SUBPROTOCOL if auth.SUBPROTOCOL in subprotocols else None

    def check_origin(self, origin: str) -> bool:
        """Tornado's own check, after get()'s: the same rule (webguard.origin_allowed)."""
        allowed = self.daemon.spec.server.allowed_origins
        return webguard.origin_allowed(origin, allowed, self.request.headers.get("Host"))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """A method this route doesn't serve (405, with Allow: GET) in the wire's JSON, not Tornado's HTML."""
        write_wire_error(self, status_code)

    def open(self, *args: Any, **kwargs: Any) -> None:
        # Tornado turns Nagle back on after the upgrade's response: each message would then wait
        # for the client's delayed ACK of the one before (a 20 ms call took 44 ms; #32).
        self.set_nodelay(True)
        stream = getattr(self.ws_connection, "stream", None)
        if stream is not None:
            stream.max_write_buffer_size = self.daemon.spec.server.max_client_buffer_bytes
        self.daemon.connections.add(self)
        self.daemon.metrics.connections.inc()

    def on_message(self, message: str | bytes) -> None:
        limit = self.daemon.spec.server.max_message_bytes
        size = _wire_size(message)
        if size > limit:
            self._reject(None, ErrorCode.TOO_LARGE, f"message is {size} bytes; server.max_message_bytes={limit}")
            return
        try:
            max_depth = self.daemon.spec.server.max_depth
            parsed = (
                frames.parse(message, max_depth) if isinstance(message, bytes) else protocol.parse(message, max_depth)
            )
        except protocol.ProtocolError as exc:
            # an error carrying the id of a request in flight would read as that request's end
            in_flight = exc.id is not None and exc.id in self.in_flight
            message = (
                f"{exc.message} (id {exc.id!r} is in flight; its request is unaffected)" if in_flight else exc.message
            )
            self._reject(None if in_flight else exc.id, ErrorCode.BAD_REQUEST, message)
            return
        if isinstance(parsed, protocol.Cancel):
            request = self.in_flight.get(parsed.id)
            if request is not None:
                self.daemon.cancel(request, "cancelled by the client")
            return
        self._submit(parsed)

    def _submit(self, submit: protocol.Submit) -> None:
        if submit.id in self.in_flight:
            self._reject(None, ErrorCode.BAD_REQUEST, f"id {submit.id!r} is already in flight on this connection")
            return
        name = self.fixed_endpoint or submit.endpoint
        if name is None:
            self._reject(submit.id, ErrorCode.BAD_REQUEST, "submit needs 'endpoint' on /v1/ws")
            return
        if self.fixed_endpoint and submit.endpoint not in (None, self.fixed_endpoint):
            message = f"this socket serves endpoint {self.fixed_endpoint!r}, not {submit.endpoint!r}"
            self._reject(submit.id, ErrorCode.BAD_REQUEST, message, name)
            return
        if isinstance(submit.data, tensors.TensorInput) and not self._binary_reply(submit, name):
            return
        request = Request(submit.id, self.client, submit.data, self, progress=submit.progress, size=submit.size)
        request.priority, request.deadline_s = submit.priority, submit.deadline_s
        request.highest_priority = self.highest_priority
        self.in_flight[submit.id] = request
        try:
            self.daemon.admit(name, request)
        except ServdError as exc:
            del self.in_flight[submit.id]
            self._reject(submit.id, exc.code, exc.message, name)

    def _binary_reply(self, submit: protocol.Submit, name: str) -> bool:
        """A binary submit's outputs come back as a binary frame; only tensor endpoints take one."""
        endpoint = self.daemon.endpoints.get(name)
        if endpoint is None:
            self._reject(submit.id, ErrorCode.UNKNOWN_ENDPOINT, f"no endpoint {name!r}", name)
            return False
        declared = endpoint.spec.tensors
        if declared is None:
            message = f"endpoint {name!r} declares no tensors: send its data as JSON text"
            self._reject(submit.id, ErrorCode.BAD_REQUEST, message, name)
            return False
        datatypes = {t.name: t.datatype for t in declared.outputs}
        assert isinstance(submit.data, tensors.TensorInput)
        submit.data.reply = functools.partial(frames.encode_outputs, datatypes=datatypes)
        return True

    def _reject(self, request_id: str | int | None, code: ErrorCode, message: str, endpoint: str | None = None) -> None:
        """Refuse one message: the client gets the error, /metrics counts it."""
        self.daemon.note_rejected(endpoint, ServdError(code, message))
        self._write(protocol.error(request_id, code, message))

    # -- Sink ------------------------------------------------------------------------------

    def send(self, request: Request, event: Progress) -> None:
        self._write(protocol.progress(request.id, event))

    def end(self, request: Request, terminal: Terminal) -> None:
        if self.in_flight.get(request.id) is request:
            del self.in_flight[request.id]
        if isinstance(terminal, Completed) and isinstance(terminal.encoded, frames.Encoded):
            timing = protocol.timing(terminal.queue_s, terminal.run_s, terminal.batch_size)
            self._write(frames.completed(request.id, terminal.encoded, timing))
            return
        self._write(protocol.terminal(request.id, terminal))

    def _write(self, text: str | bytes) -> None:
        if self.gone:
            return
        try:
            if isinstance(text, bytes):  # a binary frame (frames.py): Tornado's own path
                sent = self.write_message(text, binary=True)
                sent.add_done_callback(_retrieved)  # a write cut short by a hang-up is no one's error
                return
            if self.direct_send is None:  # compression, if any, was settled at the handshake
                self.direct_send = fast_send_supported(self.ws_connection)
            send_text(self, text, self.direct_send)
        except (WebSocketClosedError, StreamClosedError):
            self.gone = True
        except StreamBufferFullError:
            self.daemon.log.warning("slow reader disconnected", client=self.client, in_flight=len(self.in_flight))
            self.gone = True
            self._cancel_in_flight()
            self._cut_slow_reader()

    def _cut_slow_reader(self) -> None:
        """Close with 1008; a reader with output still waiting for it would never read that close
        frame, so its socket is closed at once and the output waiting for it is freed (#25),
        instead of being held through Tornado's 5 s wait for the client's close."""
        stream = getattr(self.ws_connection, "stream", None)
        with contextlib.suppress(StreamBufferFullError, StreamClosedError, WebSocketClosedError):
            self.close(SLOW_READER_CLOSE, "too much unread output (server.max_client_buffer_bytes)")
        if stream is not None and stream.writing():
            stream.close()

    def on_close(self) -> None:
        self.gone = True
        if self in self.daemon.connections:
            self.daemon.connections.discard(self)
            self.daemon.metrics.connections.dec()
        self._cancel_in_flight()

    def _cancel_in_flight(self) -> None:
        for request in list(self.in_flight.values()):
            self.daemon.cancel(request, "the client disconnected")
        self.in_flight.clear()


def _retrieved(future: Any) -> None:
    if not future.cancelled():
        future.exception()


def _wire_size(message: str | bytes) -> int:
    """Bytes the message took on the wire: max_message_bytes counts UTF-8 bytes, not characters."""
    if isinstance(message, bytes) or message.isascii():
        return len(message)
    return len(message.encode("utf-8"))
