"""GET /v1/events: the live feed (servd.web.live) as server-sent events, for the console and scripts.

A long-lived response: the handler subscribes to the feed and writes what it pushes until the
client goes away or the front closes at shutdown. Browsers read it with fetch() (so the token
travels in the Authorization header, which EventSource can't set). A reader that falls behind
skips status snapshots (each one replaces the last) instead of growing the server's buffer; one
that has taken nothing for MAX_SKIPPED snapshots in a row is dropped, and so is one that leaves
more than server.max_client_buffer_bytes unread (sse.EventStream). Loop thread only.
"""

from __future__ import annotations

import asyncio
from typing import Any

from servd.daemon import auth
from servd.web.handlers.ops import TokenRequired
from servd.web.handlers.sse import EventStream
from servd.web.live import LiveFeed

MAX_SKIPPED = 30  # about 30 s without reading


class Events(TokenRequired):
    def initialize(self, daemon: Any, feed: LiveFeed) -> None:  # type: ignore[override]
        super().initialize(daemon)
        self.feed = feed
        self.token: bytes | None = None
        self.ended: asyncio.Future[None] | None = None
        self.writing: asyncio.Future[None] | None = None
        self.skipped = 0
        self.events = EventStream(self, daemon.spec.server.max_client_buffer_bytes, self._end)

    async def get(self) -> None:
        self.token = auth.presented_token(self.request)
        self.ended = asyncio.get_running_loop().create_future()
        self.events.start()
        self.feed.subscribe(self)
        await self.ended
        self.feed.unsubscribe(self)

    # -- live.Subscriber -------------------------------------------------------------------

    def push(self, event: str, droppable: bool) -> None:
        if self.ended is None or self.ended.done():
            return
        if droppable and self.writing is not None and not self.writing.done():
            self.skipped += 1
            if self.skipped >= MAX_SKIPPED:
                self.close()
            return
        self.skipped = 0
        self.writing = self.events.send(event)
        if self.writing is None:  # gone, or just dropped for not reading
            self._end()
            return
        self.writing.add_done_callback(_retrieve)

    def authorized(self) -> bool:
        return auth.is_valid(self.token, self.daemon.tokens)

    def close(self) -> None:
        """End the stream from our side (a revoked token, a reader that stopped reading): get()
        returns and Tornado ends the response; a console then reconnects, and meets the token check."""
        self._end()

    def on_connection_close(self) -> None:
        super().on_connection_close()
        self._end()

    def _end(self) -> None:
        self.feed.unsubscribe(self)
        if self.ended is not None and not self.ended.done():
            self.ended.set_result(None)


def _retrieve(write: asyncio.Future[None]) -> None:
    """A write to a connection that closed fails with StreamClosedError; on_connection_close deals
    with that, so the error is read here rather than logged as never retrieved."""
    if not write.cancelled():
        write.exception()
