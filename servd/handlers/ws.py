"""Websocket queue: /v1/ws (any endpoint) and /v1/endpoints/{name}/ws (one endpoint).

One connection carries many requests. The connection is the Sink of its requests: it writes
their messages, and when it closes it cancels whatever they still have queued or running.
A client that doesn't read its messages is cut off once its unsent output passes
server.max_client_buffer_bytes, so it can't grow the server's buffers or stall anyone.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from tornado.iostream import IOStream, StreamBufferFullError, StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketHandler, WebSocketProtocol, WebSocketProtocol13

from servd import auth, protocol
from servd.errors import ErrorCode, ServdError
from servd.request import Request, Terminal

if TYPE_CHECKING:
    from servd.daemon import Daemon

SLOW_READER_CLOSE = 1008  # policy violation
FIN_TEXT = 0x81  # final frame, text opcode


def send_text(handler: WebSocketHandler, text: str, direct: bool) -> None:
    """Write one text message; `direct` (see fast_send_supported) takes the short way.

    `write_message` wraps each write in an asyncio Task only to translate an error nobody
    awaits, and Tornado's stream makes a Future per write; at one message per request the two
    were about a seventh of servd's CPU per request. The short way builds the frame (a server's
    frames are unmasked) and, when nothing is waiting in Tornado's write buffer, sends it on the
    socket at once; whatever the socket doesn't take goes through `stream.write`, so ordering,
    the buffer limit (slow readers) and error handling stay Tornado's.
    """
    conn = handler.ws_connection
    if conn is None or conn.is_closing():
        raise WebSocketClosedError()
    if not direct:
        handler.write_message(text)
        return
    payload = text.encode()
    size = len(payload)
    if size < 126:
        header = bytes((FIN_TEXT, size))
    elif size <= 0xFFFF:
        header = struct.pack("!BBH", FIN_TEXT, 126, size)
    else:
        header = struct.pack("!BBQ", FIN_TEXT, 127, size)
    frame = header + payload
    conn._message_bytes_out += size  # type: ignore[attr-defined]
    conn._wire_bytes_out += len(frame)  # type: ignore[attr-defined]
    stream = conn.stream
    if stream is None:
        raise WebSocketClosedError()
    limit = stream.max_write_buffer_size
    if not stream.writing() and (limit is None or len(frame) <= limit):
        # A frame over the limit goes straight to stream.write, which refuses it whole (slow
        # reader): sending part of it first would leave half a frame before the close frame.
        try:
            sent = stream.socket.send(frame)
        except OSError:  # would block, or a dead peer: stream.write below handles both as usual
            sent = 0
        if sent == len(frame):
            return
        frame = frame[sent:]
    stream.write(frame)


def fast_send_supported(conn: Any) -> bool:
    """Whether `send_text` may take the short way on this connection: plain TCP, no compression,
    unmasked frames, and the Tornado internals it counts bytes in are where it expects them."""
    return (
        getattr(conn, "_compressor", True) is None
        and getattr(conn, "mask_outgoing", True) is False
        and type(getattr(conn, "stream", None)) is IOStream
        and isinstance(getattr(conn, "_message_bytes_out", None), int)
        and isinstance(getattr(conn, "_wire_bytes_out", None), int)
    )


READ_CHUNK = 65536


class BufferedFrames(WebSocketProtocol13):
    """Tornado's RFC 6455 protocol, reading the socket a chunk at a time instead of a field at a time.

    Tornado reads each frame with three or four `stream.read_bytes` calls (header, length, mask,
    payload), each with its own Future and buffer bookkeeping: about a fifth of servd's CPU per
    small request. Here `_read_bytes`, which Tornado's frame parser calls for each field, serves
    those reads from a local buffer filled by one `read_bytes(partial=True)` per arrival. The
    frame parsing, its checks (size limit, masking, fragments, control frames) and the closing
    handshake are Tornado's own; only where the bytes come from changes.
    """

    _buffer: bytearray | None = None  # set on the first read
    _offset = 0

    async def _read_bytes(self, n: int) -> bytes:
        buffer = self._buffer
        if buffer is None:
            buffer = self._buffer = bytearray()
        while len(buffer) - self._offset < n:
            if self._offset:
                del buffer[: self._offset]
                self._offset = 0
            buffer += await self.stream.read_bytes(READ_CHUNK, partial=True)
        start, end = self._offset, self._offset + n
        data = bytes(buffer[start:end])
        if end == len(buffer):
            buffer.clear()
            self._offset = 0
        else:
            self._offset = end
        self._wire_bytes_in += n
        return data


class QueueSocket(WebSocketHandler):
    daemon: Daemon

    def initialize(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.fixed_endpoint: str | None = None
        self.in_flight: dict[str | int, Request] = {}
        self.client = ""
        self.gone = False
        self.direct_send: bool | None = None

    def get_websocket_protocol(self) -> WebSocketProtocol | None:
        """Tornado's protocol, reading through BufferedFrames where Tornado has the method it overrides."""
        protocol = super().get_websocket_protocol()
        if type(protocol) is WebSocketProtocol13 and callable(getattr(protocol, "_read_bytes", None)):
            protocol.__class__ = BufferedFrames
        return protocol

    async def get(self, *args: Any, **kwargs: Any) -> None:
        """Refuse before the upgrade: wrong token (401), unknown endpoint (404), full or draining (503)."""
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
        await super().get(*args, **kwargs)

    def _refuse(self, code: ErrorCode, message: str) -> None:
        self.daemon.note_rejected(None, ServdError(code, message))
        self.set_status(code.http_status)
        self.set_header("Content-Type", "application/json")
        if code is ErrorCode.UNAUTHORIZED:
            self.set_header("WWW-Authenticate", 'Bearer realm="servd"')  # RFC 9110: a 401 must carry one
        self.finish(protocol.error(None, code, message))

    def check_origin(self, origin: str) -> bool:
        allowed = self.daemon.spec.server.allowed_origins
        return "*" in allowed or origin in allowed

    def open(self, *args: Any, **kwargs: Any) -> None:
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
            parsed = protocol.parse(message)
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
                request.endpoint.cancel(request)
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
        request = Request(submit.id, self.client, submit.data, self, progress=submit.progress)
        self.in_flight[submit.id] = request
        try:
            self.daemon.admit(name, request)
        except ServdError as exc:
            del self.in_flight[submit.id]
            self._reject(submit.id, exc.code, exc.message, name)

    def _reject(self, request_id: str | int | None, code: ErrorCode, message: str, endpoint: str | None = None) -> None:
        """Refuse one message: the client gets the error, /metrics counts it."""
        self.daemon.note_rejected(endpoint, ServdError(code, message))
        self._write(protocol.error(request_id, code, message))

    # -- Sink ------------------------------------------------------------------------------

    def send(self, request: Request, message: str) -> None:
        self._write(message)

    def end(self, request: Request, terminal: Terminal) -> None:
        if self.in_flight.get(request.id) is request:
            del self.in_flight[request.id]
        self._write(protocol.terminal(request.id, terminal))

    def _write(self, text: str) -> None:
        if self.gone:
            return
        try:
            if self.direct_send is None:  # compression, if any, was settled at the handshake
                self.direct_send = fast_send_supported(self.ws_connection)
            send_text(self, text, self.direct_send)
        except (WebSocketClosedError, StreamClosedError):
            self.gone = True
        except StreamBufferFullError:
            self.daemon.log.warning("slow reader disconnected", client=self.client, in_flight=len(self.in_flight))
            self.gone = True
            self.close(SLOW_READER_CLOSE, "too much unread output (server.max_client_buffer_bytes)")
            self._cancel_in_flight()

    def on_close(self) -> None:
        self.gone = True
        if self in self.daemon.connections:
            self.daemon.connections.discard(self)
            self.daemon.metrics.connections.dec()
        self._cancel_in_flight()

    def _cancel_in_flight(self) -> None:
        for request in list(self.in_flight.values()):
            request.endpoint.cancel(request, "the client disconnected")
        self.in_flight.clear()


def _wire_size(message: str | bytes) -> int:
    """Bytes the message took on the wire: max_message_bytes counts UTF-8 bytes, not characters."""
    if isinstance(message, bytes) or message.isascii():
        return len(message)
    return len(message.encode("utf-8"))
