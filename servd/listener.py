"""The HTTP listener, with an accept loop that survives running out of file descriptors.

Tornado's accept handler raises on EMFILE; the listening socket stays readable, so the loop
would call it again at once, forever, logging a traceback each time and starving every client.
Here the listener pauses accepting for a moment instead, warns at most once a pause, and resumes;
clients wait in the kernel's backlog meanwhile.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterable
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop

ACCEPT_BATCH = 128  # connections taken per readiness event, so accepting can't starve the rest
BACKOFF_S = 0.25
OUT_OF_DESCRIPTORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class Listener(HTTPServer):
    """HTTPServer whose sockets accept with back-off; `when_exhausted` (if set) hears of each pause."""

    when_exhausted: Callable[[OSError], None] | None = None

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._handlers[sock.fileno()] = accept_with_backoff(sock, self._handle_connection, self._exhausted)

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
