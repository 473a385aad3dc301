"""The daemon: owns the running Spec, the endpoints, the worker pool and the listener.

Loop thread only. Signals and the file watcher only schedule work here (add_callback /
add_signal_handler); `start`, `reload` and `shutdown` do it, in a fixed order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import socket
import time
from pathlib import Path
from typing import Any, TextIO

from tornado.ioloop import IOLoop
from tornado.netutil import bind_sockets

from servd import __version__, auth, devices, entrypoints, gcpolicy, hostcheck, logs, systemd
from servd.app import HARD_FRAME_FACTOR, listener_settings, make_app
from servd.check import load_checked
from servd.endpoint import Endpoint
from servd.entrypoints import Model
from servd.errors import ErrorCode, ServdError
from servd.listener import Listener
from servd.metrics import Metrics
from servd.reload import Plan, plan
from servd.request import Request
from servd.spec import EndpointSpec, ServerSpec, Spec, SpecError
from servd.watch import ConfigWatcher
from servd.workers import LocalRunner, Runner

CLOSE_TIMEOUT_S = 10.0


class Daemon:
    def __init__(
        self,
        spec: Spec,
        *,
        runner: Runner | None = None,
        log_stream: TextIO | None = None,
        server_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.server_overrides = server_overrides or {}  # from the command line; applied to every load
        if self.server_overrides:
            spec = dataclasses.replace(spec, server=dataclasses.replace(spec.server, **self.server_overrides))
        self.spec = spec
        self.loop = IOLoop.current()
        self.log_stream = log_stream
        logs.configure(spec.server.log, log_stream)
        self.log = logs.get_logger()
        self.metrics = Metrics()
        self.runner: Runner = runner or LocalRunner(spec.server.max_threads, self.loop)
        self.tokens = auth.read_tokens(spec.server.tokens_file)
        self.endpoints: dict[str, Endpoint] = {}
        self.retiring: list[Endpoint] = []  # removed by a reload, finishing what they admitted
        self.connections: set[Any] = set()
        self.ready = False
        self.shutting_down = False
        self.generation = 1
        self.started_at = time.time()
        self.last_reload: dict[str, Any] | None = None
        self.restart_needed: list[str] = []
        self.sockets: list[socket.socket] = []
        self._server: Listener | None = None
        self._app = make_app(self)
        self._http_ids = itertools.count(1)
        self._watcher: ConfigWatcher | None = None
        self._config_digest = _digest(spec.path)
        self._reload_task: asyncio.Future[None] | None = None
        self._reload_again = False
        self._background: set[asyncio.Future[None]] = set()
        self.metrics.generation.set(self.generation)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, sockets: list[socket.socket] | None = None, *, watch: bool = True) -> None:
        """Listen, load every endpoint's models (off the loop), then report ready.

        Requests that arrive while models load are queued, not refused.
        """
        for endpoint_spec in self.spec.endpoints.values():
            self._add_endpoint(endpoint_spec)
        server = self.spec.server
        self._server = Listener(self._app, xheaders=False)
        self._server.when_exhausted = self._out_of_descriptors
        self._apply_listener_settings(server)
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
        self._check_host()
        if watch:
            self._watcher = ConfigWatcher(self.spec.path, self.loop, self._config_touched)
            self._watcher.start()
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

        def stuck() -> float:
            return endpoint.stuck_count()

        metrics = self.metrics.for_endpoint(spec.name, queued, running, batch, stuck)
        endpoint = Endpoint(spec, self.runner, metrics, self.log, self.loop)
        self.endpoints[spec.name] = endpoint
        return endpoint

    def _out_of_descriptors(self, exc: OSError) -> None:
        self.log.warning(
            "out of file descriptors: pausing accept", error=exc.strerror, connections=len(self.connections),
            hint="raise LimitNOFILE (systemd) or lower server.max_connections",
        )  # fmt: skip

    def _check_host(self) -> None:
        _, warning = hostcheck.raise_open_files_limit(self.spec.server.max_connections)
        if warning:
            self.log.warning("open files limit", detail=warning)
        code_files = [entrypoints.module_file(e.entrypoint) for e in self.spec.endpoints.values()]
        code = [path for f in code_files if f is not None for path in (f, f.parent)]
        watched = [self.spec.path, self.spec.path.parent, *code]
        for warning in hostcheck.writable_by_others(watched):
            self.log.warning("insecure permissions", detail=warning)

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
        if self._watcher is not None:
            self._watcher.stop()
        timeout = self.spec.server.drain_timeout_s
        pending = sum(len(e.queue) + e.running_count() for e in self.endpoints.values())
        self.log.info("draining", admitted=pending, drain_timeout_s=timeout)
        systemd.stopping(f"draining {pending} requests")
        for endpoint in self.endpoints.values():
            endpoint.accepting = False
        everything = [*self.endpoints.values(), *self.retiring]
        waits = [asyncio.ensure_future(e.wait_idle()) for e in everything]
        if waits:
            _, unfinished = await asyncio.wait(waits, timeout=timeout)
            for waiter in unfinished:
                waiter.cancel()
        ended = sum(e.end_all(ErrorCode.UNAVAILABLE, "the daemon is shutting down") for e in everything)
        self.log.info("drained", ended_unavailable=ended)
        await self._close_listener()
        closing = [future for endpoint in everything for future in endpoint.close_models()]
        if closing:  # close() frees memory and files; give it a bounded time before exiting
            await asyncio.wait(closing, timeout=CLOSE_TIMEOUT_S)
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
        if endpoint is None and any(e.name == name for e in self.retiring):
            raise ServdError(ErrorCode.UNAVAILABLE, f"endpoint {name!r} was removed from the config and is draining")
        if endpoint is None:
            raise ServdError(ErrorCode.UNKNOWN_ENDPOINT, f"no endpoint {name!r}; GET /v1/endpoints lists them")
        return endpoint

    def admit(self, name: str, request: Request) -> None:
        """Hand `request` to endpoint `name`'s queue, or raise ServdError saying why not."""
        if self.shutting_down:
            raise ServdError(ErrorCode.UNAVAILABLE, "the daemon is shutting down")
        self.endpoint(name).submit(request)

    def note_rejected(self, name: str | None, error: ServdError) -> None:
        """Count a refusal for /metrics, under the endpoint's name only if it is one we serve."""
        known = name if name in self.endpoints or any(e.name == name for e in self.retiring) else ""
        self.metrics.note_rejected(known or "", error.code.word)

    def next_http_id(self) -> str:
        return f"http-{next(self._http_ids)}"

    # -- reload ----------------------------------------------------------------------------

    def request_reload(self) -> None:
        """SIGHUP: reload now, even if the file's content is unchanged (it may redeploy changed code)."""
        self._schedule_reload()

    def _config_touched(self) -> None:
        """The watcher saw activity next to the config: reload only if its content changed."""
        if not self.shutting_down and _digest(self.spec.path) != self._config_digest:
            self._schedule_reload()

    def _schedule_reload(self) -> None:
        if self.shutting_down:
            return
        if self._reload_task is not None and not self._reload_task.done():
            self._reload_again = True  # one more pass after this one, to pick up the latest save
            return
        self._reload_task = asyncio.ensure_future(self.reload())

    async def reload(self) -> None:
        """Load and check the whole file, then apply it per endpoint; a bad file changes nothing."""
        while True:
            self._reload_again = False
            systemd.reloading()
            await self._reload_once()
            systemd.ready(self.status_line())
            if not self._reload_again or self.shutting_down:
                return

    async def _reload_once(self) -> None:
        started = time.perf_counter()
        digest = _digest(self.spec.path)
        try:
            new, stale = await self.loop.run_in_executor(None, self._load_new_spec)
            change = plan(self.spec, new, stale)
            loaded = await self._load_changed_models(change, new)
        except (SpecError, entrypoints.EntrypointError, devices.DeviceError, OSError, ValueError) as exc:
            self._config_digest = digest
            self._record_reload("invalid" if isinstance(exc, SpecError) else "failed", started, error=str(exc))
            return
        self._config_digest = digest
        if self.shutting_down:  # a shutdown began while models loaded: don't switch, just release
            await self._close_models(loaded)
            return
        self._apply(change, new, loaded)
        self._record_reload("applied", started, changes=change.summary())

    def _load_new_spec(self) -> tuple[Spec, set[str]]:
        """Worker thread: the new file, checked in full, and which entrypoints have new code on disk."""
        stale = {
            e.spec.entrypoint
            for e in self.endpoints.values()
            if any(entrypoints.changed_since(e.spec.entrypoint, i.model.code_mtime) for i in e.instances)
        }
        new = load_checked(self.spec.path, fresh_imports=True)
        if self.server_overrides:  # `servd run --host/--port` outlive reloads
            new = dataclasses.replace(new, server=dataclasses.replace(new.server, **self.server_overrides))
        auth.read_tokens(new.server.tokens_file)  # an unreadable tokens file fails the reload, not requests
        return new, stale

    async def _load_changed_models(self, change: Plan, new: Spec) -> dict[str, list[Model]]:
        """New models for added and remodeled endpoints, all loaded before anything is switched."""
        loaded: dict[str, list[Model]] = {}
        for spec in (*change.added, *change.remodeled):
            try:
                loaded[spec.name] = await self.load_models(spec)
            except (entrypoints.EntrypointError, devices.DeviceError) as exc:
                await self._close_models(loaded)
                key = f"endpoints.{spec.name}.entrypoint"
                raise entrypoints.EntrypointError(f"{new.where(key)}: {key}: {exc}") from exc
        return loaded

    async def _close_models(self, loaded: dict[str, list[Model]]) -> None:
        for models in loaded.values():
            for model in models:
                if model.close is not None:
                    await self.loop.run_in_executor(None, model.close)

    def _apply(self, change: Plan, new: Spec, loaded: dict[str, list[Model]]) -> None:
        """The only place a reload writes running state; synchronous, so no request sees half of it."""
        server = new.server
        if "max_threads" in change.server_changed:
            self.runner.resize(server.max_threads)
        if "log" in change.server_changed:
            logs.configure(server.log, self.log_stream)
            self.log = logs.get_logger()
            for endpoint in self.endpoints.values():
                endpoint.log = self.log
        if "tokens_file" in change.server_changed:
            self.tokens = auth.read_tokens(server.tokens_file)
        self._apply_listener_settings(server)
        self.restart_needed = [f"server.{key}" for key in change.needs_restart]
        if self.restart_needed:
            server = dataclasses.replace(server, host=self.spec.server.host, port=self.spec.server.port)
            self.log.warning("restart needed to apply", keys=self.restart_needed)
        for name in change.removed:
            self._retire(name)
        for spec in change.retuned:
            self.endpoints[spec.name].retune(spec)
        for spec in change.remodeled:
            endpoint = self.endpoints[spec.name]
            endpoint.retune(spec)
            endpoint.serve_models(loaded[spec.name])
        for spec in change.added:
            self._add_endpoint(spec).serve_models(loaded[spec.name])
        self.spec = dataclasses.replace(new, server=server)
        self.generation += 1
        self.metrics.generation.set(self.generation)
        self._apply_torch_threads()

    def _apply_listener_settings(self, server: ServerSpec) -> None:
        """Frame and body caps, pings and idle timeouts, for connections opened from now on."""
        if self._server is None:
            return
        self._app.settings.update(listener_settings(server))
        params = self._server.conn_params
        params.max_body_size = server.max_message_bytes * HARD_FRAME_FACTOR
        # a connection that sends no complete request (silent, half-open, idle keep-alive) holds a
        # descriptor max_connections doesn't count: close it as a websocket that stops answering pings
        params.header_timeout = 2 * server.ping_interval_s

    def _retire(self, name: str) -> None:
        endpoint = self.endpoints.pop(name)
        endpoint.accepting = False
        self.retiring.append(endpoint)
        task = asyncio.ensure_future(self._finish_retiring(endpoint))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _finish_retiring(self, endpoint: Endpoint) -> None:
        await endpoint.wait_idle()
        closing = endpoint.close_models()
        self.retiring.remove(endpoint)
        name = endpoint.name
        if name not in self.endpoints and not any(e.name == name for e in self.retiring):
            self.metrics.forget_endpoint(name)
        self.log.info("endpoint removed", endpoint=name)
        if closing:  # close() runs on a worker and holds the model until it returns
            await asyncio.wait(closing, timeout=self.spec.server.drain_timeout_s)
        del endpoint, closing
        gcpolicy.collect_removed()

    def _record_reload(self, result: str, started: float, **details: Any) -> None:
        took = round(time.perf_counter() - started, 4)
        self.last_reload = {
            "at": time.time(), "result": result, "took_s": took, "generation": self.generation, **details
        }  # fmt: skip
        self.metrics.reloads.labels(result).inc()
        if result == "applied":
            self.log.info("reload", result=result, generation=self.generation, took_s=took, **details)
        else:
            self.log.error("reload", result=result, generation=self.generation, took_s=took, **details)

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


def _digest(path: Path) -> str | None:
    """Content hash of the config file (None if unreadable), to tell a real change from a touch."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
