"""The composition root: builds the daemon, its web front and the listener, and wires them.

Data flows one way: file -> Checked spec -> Daemon (endpoints, workers) -> Application and
handlers (which call the daemon) -> Listener. Nothing below this module builds what sits above
it; `servd run` and the tests' harness both start servd through `start` here.

Threading: everything here runs on the loop thread, once at start and once at shutdown; the
only other thread it starts is the daemon's file watcher (daemon.watch), which hands back to the loop.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from servd import __version__
from servd.daemon.daemon import Daemon
from servd.daemon.loading import Checked
from servd.runners.seam import Runner
from servd.web.app import make_app
from servd.web.listener import WebFront, bind


@dataclass
class Service:
    """A running servd: the daemon and the web front it serves through."""

    daemon: Daemon
    front: WebFront

    @property
    def port(self) -> int:
        return self.front.port

    @property
    def url(self) -> str:
        return self.front.url

    async def stop(self) -> None:
        """Drain (DESIGN §6): stop admitting, finish or end what was admitted, close the front, the models."""
        await self.daemon.shutdown()


def build(
    checked: Checked,
    *,
    log_stream: TextIO | None = None,
    server_overrides: Mapping[str, Any] | None = None,
    runner: Runner | None = None,
) -> Service:
    """The daemon and its front, wired but not listening."""
    daemon = Daemon(checked, log_stream=log_stream, server_overrides=server_overrides, runner=runner)
    front = WebFront(make_app(daemon), daemon.connections)
    daemon.front = front
    return Service(daemon, front)


async def start(service: Service, sockets: list[socket.socket] | None = None, *, watch: bool = True) -> None:
    """Listen (on `sockets`, or the spec's host:port), then load the models and report ready."""
    server = service.daemon.spec.server
    service.front.listen(sockets or bind(server.host, server.port), server)
    service.daemon.log.info("listening", url=service.url, config=str(service.daemon.spec.path), version=__version__)
    await service.daemon.start(watch=watch)
