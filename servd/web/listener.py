"""The web front's listener: its sockets, every per-connection setting, and closing it in order.

Every listener setting taken from servd.yaml (frame and body caps, pings, header timeout) is
applied here, from the server spec, at start and on each reload (`WebFront.apply`); the
daemon only hands over the new ServerSpec.

The accept loop survives running out of file descriptors.
Tornado's accept handler raises on EMFILE; the listening socket stays readable, so the loop
would call it again at once, forever, logging a traceback each time and starving every client.
Here the listener pauses accepting for a moment instead, warns at most once a pause, and resumes;
clients wait in the kernel's backlog meanwhile.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets
from tornado.web import Application

from servd.config.spec import ServerSpec
from servd.obs import logs
from servd.web import compat

ACCEPT_BATCH = 128  # connections taken per readiness event, so accepting can't starve the rest
BACKOFF_S = 0.25
OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# Frames up to this many times max_message_bytes get a too_large message; larger ones close the socket.
HARD_FRAME_FACTOR = 2
FLUSH_TIMEOUT_S = 2.0  # at shutdown, how long replies already written may take to leave


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
        self.sockets: list[socket.socket] = []

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
            # descriptor max_connections doesn't count: close it as a websocket that stops answering pings
            header_timeout=2 * server.ping_interval_s,
        )

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


class Listener(HTTPServer):
    """HTTPServer whose sockets accept with back-off; `when_exhausted` (if set) hears of each pause."""

    when_exhausted: Callable[[OSError], None] | None = None

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            compat.install_accept(self, sock, self._accept)

    def _accept(self, sock: socket.socket, on_connection: Callable[[socket.socket, Any], None]) -> Callable[[], None]:
        return accept_with_backoff(sock, on_connection, self._exhausted)

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
