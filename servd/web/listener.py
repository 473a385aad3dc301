"""The web front's listener: its sockets, every per-connection setting, and closing it in order.

Every listener setting taken from servd.yaml (frame and body caps, pings, header and body
timeouts, the connection limit) is applied here, from the server spec, at start and on each
reload (`WebFront.apply`); the daemon only hands over the new ServerSpec.

server.max_connections counts every open client connection, HTTP and websocket alike: each holds
a file descriptor, and HTTP connections that send slowly used to hold them uncounted until the
process ran out (issue 25). At the limit a new connection is answered 503 at once and closed.

After a burst of closed connections (a flood ending) the cyclic collector is asked to run once,
a moment later: Tornado's handler, request and connection refer to each other, so what a flood
leaves behind is otherwise freed only when a full collection happens to come (RSS stayed ~80 MB
up after each round of an unauthenticated flood).

The accept loop survives running out of file descriptors.
Tornado's accept handler raises on EMFILE; the listening socket stays readable, so the loop
would call it again at once, forever, logging a traceback each time and starving every client.
Here the listener pauses accepting for a moment instead, warns at most once a pause, and resumes;
clients wait in the kernel's backlog meanwhile.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import suppress
from http import HTTPStatus
from typing import Any, Protocol

from tornado.httpserver import HTTPServer
from tornado.httputil import HTTPConnection, HTTPHeaders, HTTPMessageDelegate, RequestStartLine, ResponseStartLine
from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets
from tornado.web import Application

from servd.config.spec import ServerSpec
from servd.errors import ErrorCode, ServdError
from servd.obs import logs
from servd.web import compat
from servd.web.handlers.base import error_body

ACCEPT_BATCH = 128  # connections taken per readiness event, so accepting can't starve the rest
BACKOFF_S = 0.25
OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# Frames up to this many times max_message_bytes get a too_large message; larger ones close the socket.
HARD_FRAME_FACTOR = 2
FLUSH_TIMEOUT_S = 2.0  # at shutdown, how long replies already written may take to leave
BODY_TIMEOUT_MARGIN_S = 1.0  # Tornado's own body timeout, behind the handlers' (which answer 408)
COLLECT_AFTER = 256  # closed connections that make a burst worth a collection
COLLECT_DELAY_S = 1.0  # wait for the burst to end; at most one collection per delay


class Connection(Protocol):
    """An open websocket, as the front closes it at shutdown."""

    def close(self, code: int | None = None, reason: str | None = None) -> None: ...


def tornado_settings(server: ServerSpec) -> dict[str, Any]:
    """Application settings taken from servd.yaml; Tornado reads them per connection."""
    return {
        "websocket_ping_interval": server.ping_interval_s,
        "websocket_ping_timeout": server.ping_interval_s,
        "websocket_max_message_size": server.max_message_bytes * HARD_FRAME_FACTOR,
    }


def bind(host: str, port: int) -> list[socket.socket]:
    """The listening sockets; an error names the address, as an operator needs to fix it."""
    try:
        return bind_sockets(port, host)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror} (server.host/server.port)") from None


class WebFront:
    """The application behind a Listener, and the websockets it has open (`connections`)."""

    def __init__(self, app: Application, connections: set[Any]) -> None:
        self.app = app
        self.connections = connections
        self.server = Listener(app, xheaders=False)
        self.server.when_exhausted = self._out_of_descriptors
        self.server.admits = self._admits
        self.sockets: list[socket.socket] = []
        self.max_connections = ServerSpec().max_connections
        # how a refused connection is counted (the daemon's note_rejected, given by make_app)
        self.note_rejected: Callable[[str | None, ServdError], None] | None = app.settings.get("servd_note_rejected")

    def listen(self, sockets: list[socket.socket], server: ServerSpec) -> None:
        self.apply(server)
        self.sockets = sockets
        self.server.add_sockets(sockets)

    def apply(self, server: ServerSpec) -> None:
        """Frame and body caps, pings and idle timeouts, for connections opened from now on."""
        self.app.settings.update(tornado_settings(server))
        compat.set_connection_limits(
            self.server,
            max_body_size=server.max_message_bytes * HARD_FRAME_FACTOR,
            # a connection that sends no complete request (silent, half-open, idle keep-alive) holds a
            # descriptor: close it as a websocket that stops answering pings
            header_timeout=2 * server.ping_interval_s,
            # the handlers answer a late body 408 at body_timeout_s; this closes any route's (one that
            # takes no body too) should a handler not
            body_timeout=server.body_timeout_s + BODY_TIMEOUT_MARGIN_S,
        )
        self.max_connections = server.max_connections

    def open_connections(self) -> int:
        """Client connections open now: HTTP (a websocket's until its upgrade) and websockets."""
        return compat.http_connection_count(self.server) + len(self.connections)

    def _admits(self, sock: socket.socket) -> bool:
        """Whether a just-accepted connection may stay; one past max_connections is answered 503 and closed."""
        if self.open_connections() < self.max_connections:
            return True
        error = ServdError(ErrorCode.UNAVAILABLE, f"server.max_connections={self.max_connections} reached; retry later")
        refuse_connection(sock, error)
        if self.note_rejected is not None:
            self.note_rejected(None, error)
        return False

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = self.sockets[0].getsockname()[0]
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    async def close(self) -> None:
        """Stop accepting, close websockets (1001), let written replies leave, then close the rest."""
        self.server.stop()
        for connection in list(self.connections):
            connection.close(1001, "server shutting down")
        await self._flush()
        await self.server.close_all_connections()

    async def _flush(self) -> None:
        """Replies ended by the drain are written but may sit in a stream's buffer; closing it would drop them."""
        deadline = asyncio.get_running_loop().time() + FLUSH_TIMEOUT_S
        await asyncio.sleep(0)  # handlers resumed by the drain write their replies
        while any(stream.writing() for stream in compat.http_streams(self.server)):
            if asyncio.get_running_loop().time() > deadline:
                return
            await asyncio.sleep(0.01)

    def _out_of_descriptors(self, exc: OSError) -> None:
        logs.get_logger().warning(
            "out of file descriptors: pausing accept", error=exc.strerror, connections=len(self.connections),
            hint="raise LimitNOFILE (systemd) or lower server.max_connections",
        )  # fmt: skip


def refuse_connection(sock: socket.socket, error: ServdError) -> None:
    """Answer a connection we won't serve with `error` as an HTTP response, and close it. What the
    client already sent is read first: closing on unread data resets the connection, and a reset
    can destroy the answer before the client reads it."""
    body = error_body(error.code, error.message).encode()
    head = (
        f"HTTP/1.1 {error.code.http_status} {HTTPStatus(error.code.http_status).phrase}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    with suppress(OSError):
        sock.setblocking(False)
        with suppress(BlockingIOError):
            sock.recv(65536)
        sock.send(head.encode() + body)
    sock.close()


class Listener(HTTPServer):
    """HTTPServer whose sockets accept with back-off; `when_exhausted` (if set) hears of each pause,
    and `admits` (if set) decides whether each accepted connection is served."""

    when_exhausted: Callable[[OSError], None] | None = None
    admits: Callable[[socket.socket], bool] | None = None
    closed_since_collect = 0
    collect_pending = False

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            compat.install_accept(self, sock, self._accept)

    def _accept(self, sock: socket.socket, on_connection: Callable[[socket.socket, Any], None]) -> Callable[[], None]:
        def admitted(connection: socket.socket, address: Any) -> None:
            if self.admits is None or self.admits(connection):
                on_connection(connection, address)

        return accept_with_backoff(sock, admitted, self._exhausted)

    def start_request(self, server_conn: object, request_conn: HTTPConnection) -> HTTPMessageDelegate:
        delegate = super().start_request(server_conn, request_conn)
        return AckBody(delegate, request_conn) if QUICKACK is not None else delegate

    def on_close(self, server_conn: object) -> None:
        super().on_close(server_conn)
        self.closed_since_collect += 1
        if self.closed_since_collect >= COLLECT_AFTER and not self.collect_pending:
            self.collect_pending = True
            IOLoop.current().call_later(COLLECT_DELAY_S, self._collect)

    def _collect(self) -> None:
        """One full collection after a burst of closed connections (see the module doc); under
        `servd run` it walks only what serving created (gcpolicy froze the rest): a few ms."""
        closed, self.closed_since_collect = self.closed_since_collect, 0
        self.collect_pending = False
        started = time.perf_counter()
        found = gc.collect()
        logs.get_logger().debug(
            "collected after closed connections", closed=closed, found=found,
            ms=round(1000 * (time.perf_counter() - started), 2),
        )  # fmt: skip

    def _exhausted(self, exc: OSError) -> None:
        if self.when_exhausted is not None:
            self.when_exhausted(exc)


def accept_with_backoff(
    sock: socket.socket, on_connection: Callable[[socket.socket, Any], None], on_exhausted: Callable[[OSError], None]
) -> Callable[[], None]:
    """Accept connections on `sock` from the loop; returns the function that stops it."""
    loop = IOLoop.current()
    state = {"listening": True, "removed": False}

    def accept(fd: Any, events: int) -> None:
        for _ in range(ACCEPT_BATCH):
            if state["removed"]:
                return
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in OUT_OF_DESCRIPTORS:
                    raise
                pause(exc)
                return
            on_connection(connection, address)

    def pause(exc: OSError) -> None:
        loop.remove_handler(sock)
        state["listening"] = False
        on_exhausted(exc)
        loop.call_later(BACKOFF_S, resume)

    def resume() -> None:
        if not state["removed"]:
            loop.add_handler(sock, accept, IOLoop.READ)
            state["listening"] = True

    def remove() -> None:
        if state["listening"]:
            loop.remove_handler(sock)
        state["removed"] = True

    loop.add_handler(sock, accept, IOLoop.READ)
    return remove


QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux; elsewhere the kernel's ACK timing is left alone


class AckBody(HTTPMessageDelegate):
    """Acknowledge a request's headers at once when a body is to follow them.

    A client that writes its headers and then its body in a second write, with Nagle on
    (geventhttpclient posting a file or a stream; many hand-written clients), may not send that
    second write until the first is acknowledged; and on a kept-alive connection Linux delays
    the ACK of data that gets no immediate answer (up to 40 ms, to piggyback it on the reply),
    so every such request waited 40 ms for its own body (tests/test_triton_client.py). Setting
    TCP_QUICKACK sends the pending ACK now. Clients that write the request in one piece lose
    nothing but one bare ACK; requests without a body (GET, the websocket upgrade) are untouched.
    Everything else passes through to Tornado's delegate. Loop thread only.
    """

    __slots__ = ("connection", "delegate")

    def __init__(self, delegate: HTTPMessageDelegate, connection: HTTPConnection) -> None:
        self.delegate = delegate
        self.connection = connection

    def headers_received(
        self, start_line: RequestStartLine | ResponseStartLine, headers: HTTPHeaders
    ) -> Awaitable[None] | None:
        if headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in headers:
            stream = getattr(self.connection, "stream", None)
            with suppress(OSError, AttributeError):
                stream.socket.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)  # type: ignore[union-attr]
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.delegate.finish()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()
