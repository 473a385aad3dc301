"""Every use of another library's private API, in one place, each with a check that it still exists.

servd takes a few short cuts through Tornado's internals on the per-request path (measured in
benchmarks/: about a third of servd's CPU per small request) and reads one prometheus_client
attribute. An upgrade that moves one of these must fail loudly, not slow down or misbehave
silently: `missing()` lists what is gone, tests/test_compat.py asserts it is empty, and setup.cfg
pins the versions tested. Where a short cut's internals are missing at run time, servd falls back
to the library's public path (websockets) or raises a clear error at start (the listener).
The websocket protocol here also adds the one RFC 6455 check Tornado lacks (unmasked client
frames). Loop thread only, as everything of Tornado's.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine
from tornado.iostream import IOStream
from tornado.web import Application, RequestHandler
from tornado.websocket import WebSocketClosedError, WebSocketHandler, WebSocketProtocol, WebSocketProtocol13

from servd.obs import prometheus_compat

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
MASKED = 0x80  # the mask bit, in a frame's second byte
PROTOCOL_ERROR = 1002


class BufferedFrames(WebSocketProtocol13):
    """Tornado's RFC 6455 protocol, reading the socket a chunk at a time instead of a field at a time.

    Tornado reads each frame with three or four `stream.read_bytes` calls (header, length, mask,
    payload), each with its own Future and buffer bookkeeping: about a fifth of servd's CPU per
    small request. Here `_read_bytes`, which Tornado's frame parser calls for each field, serves
    those reads from a local buffer filled by one `read_bytes(partial=True)` per arrival. The
    frame parsing, its checks (size limit, masking, fragments, control frames) and the closing
    handshake are Tornado's own; only where the bytes come from changes, and one check is added
    (`_receive_frame`: a client's frames are masked).
    """

    _buffer: bytearray | None = None  # set on the first read
    _offset = 0

    async def _receive_frame(self) -> None:
        """Tornado's frame parser, after the one check it lacks: RFC 6455 5.1, "a server MUST close
        the connection upon receiving a frame that is not masked". An unmasked frame is answered
        with a close frame (1002, protocol error) and the connection is closed at once."""
        buffer = await self.fill(2)
        if not buffer[self._offset + 1] & MASKED:
            self.close(PROTOCOL_ERROR, "a client's frames must be masked (RFC 6455 section 5.1)")
            self._abort()
            return
        await super()._receive_frame()

    async def fill(self, n: int) -> bytearray:
        """The buffer, holding at least `n` unread bytes (from `_offset`)."""
        buffer = self._buffer
        if buffer is None:
            buffer = self._buffer = bytearray()
        while len(buffer) - self._offset < n:
            if self._offset:
                del buffer[: self._offset]
                self._offset = 0
            buffer += await self.stream.read_bytes(READ_CHUNK, partial=True)
        return buffer

    async def _read_bytes(self, n: int) -> bytes:
        buffer = await self.fill(n)
        start, end = self._offset, self._offset + n
        data = bytes(buffer[start:end])
        if end == len(buffer):
            buffer.clear()
            self._offset = 0
        else:
            self._offset = end
        self._wire_bytes_in += n
        return data


def buffered(protocol: WebSocketProtocol | None) -> WebSocketProtocol | None:
    """Tornado's protocol, reading through BufferedFrames where Tornado has the method it overrides."""
    if type(protocol) is WebSocketProtocol13 and callable(getattr(protocol, "_read_bytes", None)):
        protocol.__class__ = BufferedFrames
    return protocol


# -- HTTP listener -------------------------------------------------------------------------


def install_accept(server: HTTPServer, sock: Any, make_handler: Callable[..., Callable[[], None]]) -> None:
    """Register `sock` with `server` as HTTPServer.add_sockets does, but with our accept loop.

    `make_handler(sock, on_connection)` starts accepting and returns the function that stops it;
    Tornado's `stop()` calls that function, as it would its own.
    """
    server._sockets[sock.fileno()] = sock
    server._handlers[sock.fileno()] = make_handler(sock, server._handle_connection)


def set_connection_limits(
    server: HTTPServer, *, max_body_size: int, header_timeout: float, body_timeout: float
) -> None:
    """Body cap, header and body timeouts for HTTP connections accepted from now on (read per connection)."""
    params = server.conn_params
    params.max_body_size = max_body_size
    params.header_timeout = header_timeout
    params.body_timeout = body_timeout


def http_connection_count(server: HTTPServer) -> int:
    """The server's open HTTP/1 connections (a websocket's leaves this count at its upgrade)."""
    return len(server._connections)


def http_streams(server: HTTPServer) -> Iterator[IOStream]:
    """The streams of the server's open HTTP/1 connections (websockets included)."""
    for connection in list(server._connections):
        stream = getattr(connection, "stream", None)
        if stream is not None:
            yield stream


# -- request handlers ----------------------------------------------------------------------


def response_started(handler: RequestHandler) -> bool:
    return bool(handler._headers_written)


def response_finished(handler: RequestHandler) -> bool:
    return bool(handler._finished)


def implements(handler_class: type[RequestHandler], method: str) -> bool:
    """Whether a handler class serves `method` ("get", "post", ...) rather than Tornado's 405 stub."""
    return getattr(handler_class, method) is not RequestHandler._unimplemented_method


def reason(handler: RequestHandler) -> str:
    """The reason phrase Tornado set with the status (e.g. "Method Not Allowed")."""
    return str(handler._reason)


# -- the check -----------------------------------------------------------------------------

REQUIRED: tuple[tuple[str, Any, str], ...] = (
    ("tornado", RequestHandler, "_unimplemented_method"),
    ("tornado", WebSocketProtocol13, "_read_bytes"),
    ("tornado", WebSocketProtocol13, "_receive_frame"),
    ("tornado", WebSocketProtocol13, "_abort"),
    ("tornado", HTTPServer, "_handle_connection"),
)
REQUIRED_ON_INSTANCES = (
    ("tornado", "HTTPServer()", ("_sockets", "_handlers", "_connections", "conn_params")),
    (
        "tornado",
        "WebSocketProtocol13(...)",
        ("_message_bytes_out", "_wire_bytes_out", "_wire_bytes_in", "_compressor", "mask_outgoing"),
    ),
    ("tornado", "RequestHandler(...)", ("_reason", "_headers_written", "_finished")),
)


def missing() -> list[str]:
    """The private names servd relies on that the installed libraries no longer have."""
    gone = [f"{lib}: {owner.__name__}.{name}" for lib, owner, name in REQUIRED if not _has_class_attr(owner, name)]
    gone += prometheus_compat.missing()
    for lib, what, names in REQUIRED_ON_INSTANCES:
        instance = _sample(what)
        gone += [f"{lib}: {what}.{name}" for name in names if not hasattr(instance, name)]
    return gone


def _has_class_attr(owner: type, name: str) -> bool:
    return any(name in vars(klass) for klass in owner.__mro__) or name in getattr(owner, "__slots__", ())


def _sample(what: str) -> Any:
    """A throwaway instance of each kind whose private attributes are set in __init__."""
    if what == "HTTPServer()":
        return HTTPServer(lambda request: None)
    if what == "WebSocketProtocol13(...)":

        class _Handler:
            ping_interval = None
            ping_timeout = None
            max_message_size = 1
            settings: dict[str, Any] = {}

        return WebSocketProtocol13(_Handler(), mask_outgoing=False, params=_Params())  # type: ignore[arg-type]
    if what == "RequestHandler(...)":
        start = RequestStartLine("GET", "/", "HTTP/1.1")
        headers = HTTPHeaders({"Host": "localhost"})
        return RequestHandler(Application(), HTTPServerRequest(start_line=start, headers=headers, connection=_Conn()))  # type: ignore[arg-type]
    raise ValueError(what)


class _Conn:
    def set_close_callback(self, callback: Any) -> None:
        pass


class _Params:
    ping_interval = None
    ping_timeout = None
    max_message_size = 1
    compression_options = None
