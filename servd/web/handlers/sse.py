"""Server-sent events: one response's stream, written as it goes, with a cap on what waits unread.

Every SSE answer (servd's `POST /v1/endpoints/{name}` with `Accept: text/event-stream`, OpenAI's
`stream: true`, and the live feed at /v1/events) writes through an EventStream. Each event is
flushed at once; what the client hasn't read waits in the connection's write buffer, which is
held to server.max_client_buffer_bytes, as a websocket's is. A client that lets more than that
pile up (one that asked for a stream and never reads) is dropped: its connection closes, and
`on_drop` (the handler) cancels what it was running. Without the cap one such client held
+510 MB of a generator's output (issue 25).

Loop thread only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tornado.http1connection import HTTP1Connection
from tornado.iostream import StreamBufferFullError, StreamClosedError
from tornado.web import RequestHandler

from servd.obs import logs


class EventStream:
    """The event stream of `handler`'s response; `on_drop()` is called once if the reader is cut off."""

    def __init__(self, handler: RequestHandler, limit: int, on_drop: Callable[[], None]) -> None:
        self.handler = handler
        self.limit = limit
        self.on_drop = on_drop
        self.started = False
        self.gone = False  # the client went away, or was dropped: nothing more is written

    def start(self) -> None:
        """The 200 and the stream's headers, once (at admission or with the first event)."""
        if self.started:
            return
        self.started = True
        handler = self.handler
        handler.set_header("Content-Type", "text/event-stream")
        handler.set_header("X-Accel-Buffering", "no")  # nginx: pass each event on at once
        handler.set_header("X-Content-Type-Options", "nosniff")
        connection = handler.request.connection
        stream = getattr(connection, "stream", None)
        if stream is not None:
            stream.max_write_buffer_size = self.limit
        self.send("")

    def send(self, text: str) -> asyncio.Future[None] | None:
        """Write `text` (whole events) and flush it; the flush's future, or None when the client
        is gone or was just dropped for not reading."""
        if self.gone:
            return None
        self.start()
        handler = self.handler
        try:
            if text:
                handler.write(text)
            return handler.flush()
        except StreamClosedError:
            self.gone = True
        except StreamBufferFullError:
            self.drop()
        return None

    def drop(self) -> None:
        """Cut off a client that doesn't read: close its connection, then tell the handler."""
        self.gone = True
        request = self.handler.request
        logs.get_logger().warning(
            "slow reader disconnected", path=request.path, client=request.remote_ip,
            hint=f"it left more than server.max_client_buffer_bytes={self.limit} unread",
        )  # fmt: skip
        close_connection(self.handler)
        self.on_drop()


def close_connection(handler: RequestHandler) -> None:
    """Close the handler's connection now, whatever it is sending or receiving. Tornado then
    doesn't call the handler's on_connection_close: the caller cleans up itself."""
    connection = handler.request.connection
    if isinstance(connection, HTTP1Connection):
        connection.close()
