"""The daemon: owns the running Spec, the endpoints, the worker pool and the listener.

Loop thread only. Signals and the file watcher only schedule work here (add_callback /
add_signal_handler); `start`, `reload` and `shutdown` do it, in a fixed order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import socket
import time
from typing import Any, TextIO

from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets

from servd import __version__, auth, devices, entrypoints, logs, systemd
from servd.app import HARD_FRAME_FACTOR, make_app
from servd.endpoint import Endpoint
from servd.entrypoints import Model
from servd.errors import ErrorCode, ServdError
from servd.metrics import Metrics
from servd.request import Request
from servd.spec import EndpointSpec, Spec
from servd.workers import LocalRunner, Runner


class Daemon:
    def __init__(self, spec: Spec, *, runner: Runner | None = None, log_stream: TextIO | None = None) -> None:
        self.spec = spec
        self.loop = IOLoop.current()
        self.log_stream = log_stream
        logs.configure(spec.server.log, log_stream)
        self.log = logs.get_logger()
        self.metrics = Metrics()
        self.runner: Runner = runner or LocalRunner(spec.server.max_threads, self.loop)
        self.tokens = auth.read_tokens(spec.server.tokens_file)
        self.endpoints: dict[str, Endpoint] = {}
        self.connections: set[Any] = set()
        self.ready = False
        self.shutting_down = False
        self.generation = 1
        self.started_at = time.time()
        self.last_reload: dict[str, Any] | None = None
        self.restart_needed: list[str] = []
        self.sockets: list[socket.socket] = []
        self._server: HTTPServer | None = None
        self._http_ids = itertools.count(1)
        self.metrics.generation.set(self.generation)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, sockets: list[socket.socket] | None = None) -> None:
        """Listen, load every endpoint's models (off the loop), then report ready.

        Requests that arrive while models load are queued, not refused.
        """
        for endpoint_spec in self.spec.endpoints.values():
            self._add_endpoint(endpoint_spec)
        server = self.spec.server
        self._server = HTTPServer(
            make_app(self), max_body_size=server.max_message_bytes * HARD_FRAME_FACTOR, xheaders=False
        )
        self.sockets = sockets or bind_sockets(server.port, server.host)
        self._server.add_sockets(self.sockets)
        self.log.info("listening", url=self.url, config=str(self.spec.path), version=__version__)
        try:
            for endpoint in self.endpoints.values():
                endpoint.serve_models(await self.load_models(endpoint.spec))
        except Exception:
            for endpoint in self.endpoints.values():
                endpoint.end_all(ErrorCode.UNAVAILABLE, "the daemon failed to start")
            raise
        self._apply_torch_threads()
        self.ready = True
        self.log.info("ready", endpoints=sorted(self.endpoints))
        systemd.ready(self.status_line())

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = self.sockets[0].getsockname()[0]
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    async def load_models(self, spec: EndpointSpec, *, fresh: bool = False) -> list[Model]:
        """One model per device, built on a worker thread: constructors may load weights for minutes."""
        entry = entrypoints.resolve(spec.entrypoint, self.spec.path.parent, fresh=fresh)
        models = []
        for device in devices.resolve(spec.devices):
            started = time.perf_counter()
            model = await self.loop.run_in_executor(None, entry.instantiate, device, spec.options)
            self.log.info(
                "model loaded", endpoint=spec.name, device=device, load_s=round(time.perf_counter() - started, 3)
            )
            models.append(model)
        return models

    def _add_endpoint(self, spec: EndpointSpec) -> Endpoint:
        endpoint: Endpoint

        def queued() -> float:
            return len(endpoint.queue)

        def running() -> float:
            return endpoint.running_count()

        def batch() -> float:
            return endpoint.working_batch_size

        metrics = self.metrics.for_endpoint(spec.name, queued, running, batch)
        endpoint = Endpoint(spec, self.runner, metrics, self.log, self.loop)
        self.endpoints[spec.name] = endpoint
        return endpoint

    def _apply_torch_threads(self) -> None:
        cpu_calls = sum(
            e.spec.concurrency
            for e in self.endpoints.values()
            for i in e.instances
            if i.model.device == "cpu" and i.model.uses_torch
        )
        threads = devices.torch_threads_for(cpu_calls, self.spec.server.torch_threads)
        if devices.loaded_torch() is not None:
            devices.apply_torch_threads(threads)
            self.log.info("torch threads", threads=threads, cpu_calls_at_once=cpu_calls)

    async def shutdown(self) -> None:
        """Stop admitting, finish admitted work up to drain_timeout_s, end the rest, close models."""
        if self.shutting_down:
            return
        self.shutting_down = True
        timeout = self.spec.server.drain_timeout_s
        pending = sum(len(e.queue) + e.running_count() for e in self.endpoints.values())
        self.log.info("draining", admitted=pending, drain_timeout_s=timeout)
        systemd.stopping(f"draining {pending} requests")
        for endpoint in self.endpoints.values():
            endpoint.accepting = False
        waits = [asyncio.ensure_future(e.wait_idle()) for e in self.endpoints.values()]
        if waits:
            _, unfinished = await asyncio.wait(waits, timeout=timeout)
            for waiter in unfinished:
                waiter.cancel()
        ended = sum(e.end_all(ErrorCode.UNAVAILABLE, "the daemon is shutting down") for e in self.endpoints.values())
        self.log.info("drained", ended_unavailable=ended)
        await self._close_listener()
        for endpoint in self.endpoints.values():
            endpoint.close_models()
        self.runner.shutdown()
        self.log.info("stopped")

    async def _close_listener(self) -> None:
        if self._server is not None:
            self._server.stop()
        for connection in list(self.connections):
            connection.close(1001, "server shutting down")
        if self._server is not None:
            await self._server.close_all_connections()

    # -- requests --------------------------------------------------------------------------

    def endpoint(self, name: str) -> Endpoint:
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            raise ServdError(ErrorCode.UNKNOWN_ENDPOINT, f"no endpoint {name!r}; GET /v1/endpoints lists them")
        return endpoint

    def admit(self, name: str, request: Request) -> None:
        """Hand `request` to endpoint `name`'s queue, or raise ServdError saying why not."""
        if self.shutting_down:
            raise ServdError(ErrorCode.UNAVAILABLE, "the daemon is shutting down")
        self.endpoint(name).submit(request)

    def next_http_id(self) -> str:
        return f"http-{next(self._http_ids)}"

    # -- status ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "config": str(self.spec.path),
            "generation": self.generation,
            "ready": self.ready,
            "shutting_down": self.shutting_down,
            "uptime_s": round(time.time() - self.started_at, 3),
            "last_reload": self.last_reload,
            "restart_needed": self.restart_needed,
            "endpoints": sorted(self.endpoints),
            "server": dataclasses.asdict(self.spec.server)
            | {"tokens_file": _str_or_none(self.spec.server.tokens_file)},
        }

    def status_line(self) -> str:
        queued = sum(len(e.queue) for e in self.endpoints.values())
        return f"generation {self.generation}, {len(self.endpoints)} endpoints, {queued} queued"


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
