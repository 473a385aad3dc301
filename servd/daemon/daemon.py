"""The daemon: owns the running Spec, the endpoints and the worker pool; starts, reloads, drains.

Loop thread only. Signals and the file watcher only schedule work here (add_callback /
add_signal_handler); `start`, `reload` (servd/daemon/reloader.py) and `shutdown` do it, in a fixed order. The web front
(listener, application, handlers) is built and wired by the composition root (`servd.service`);
the daemon knows it only as a `Front` it hands each new ServerSpec to and closes at shutdown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from tornado.ioloop import IOLoop

from servd import __version__
from servd.config.spec import EndpointSpec, ServerSpec, Spec
from servd.core.endpoint import Endpoint
from servd.core.request import Request
from servd.daemon import auth, systemd
from servd.daemon import hostwarnings as hostcheck
from servd.daemon.loading import Checked
from servd.daemon.reloader import Front, Reloader
from servd.daemon.watch import ConfigWatcher
from servd.errors import ErrorCode, ServdError
from servd.obs import logs
from servd.obs.metrics import Metrics
from servd.runners import devices, entrypoints
from servd.runners.entrypoints import Entrypoint, Model
from servd.runners.pool import LocalRunner
from servd.runners.seam import ReplicaState, Runner

CLOSE_TIMEOUT_S = 10.0


class Daemon:
    def __init__(
        self,
        checked: Checked,
        *,
        runner: Runner | None = None,
        log_stream: TextIO | None = None,
        server_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self.server_overrides = dict(server_overrides or {})  # from the command line; applied to every load
        spec = self.with_overrides(checked.spec)
        self.spec = spec
        self.loop = IOLoop.current()
        self.log_stream = log_stream
        logs.configure(spec.server.log, log_stream)
        self.log = logs.get_logger()
        self.metrics = Metrics()
        self.runner: Runner = runner or self._make_runner(spec)
        self.tokens = auth.read_tokens(spec.server.tokens_file)
        self.endpoints: dict[str, Endpoint] = {}
        self.retiring: list[Endpoint] = []  # removed by a reload, finishing what they admitted
        self.connections: set[Any] = set()  # open websockets; the front closes them at shutdown
        self.front: Front | None = None
        self._ready = False
        self.shutting_down = False
        self.generation = 1
        self.started_at = time.time()  # a timestamp (OpenAI's `created`); uptime is measured on the monotonic clock
        self._started_monotonic = time.monotonic()
        self.last_reload: dict[str, Any] | None = None
        self.reload_observers: list[Callable[[dict[str, Any]], None]] = []  # told of each recorded reload (live.py)
        self.restart_needed: list[str] = []
        self.unfinished: list[str] = []  # after shutdown: what could not be waited for
        self.torch_threads: int | None = None  # what torch_threads (or auto) resolved to
        self._checked: Checked | None = checked
        self._http_ids = itertools.count(1)
        self._watcher: ConfigWatcher | None = None
        self.background: set[asyncio.Future[None]] = set()  # tasks the loop must keep (retiring endpoints)
        self.reloader = Reloader(self)
        self.metrics.generation.set(self.generation)
        for endpoint_spec in spec.endpoints.values():
            self.add_endpoint(endpoint_spec)

    def _make_runner(self, spec: Spec) -> Runner:
        """The thread pool, or with `cluster.engine: ray` the Ray runner (Ray imported only then)."""
        if not spec.cluster.on_ray:
            return LocalRunner(spec.server.max_threads, self.loop, lambda: self.log)
        from servd.runners.ray import RayRunner

        runner = RayRunner(spec.cluster, self.loop, lambda: self.log)
        runner.wake = self._replica_changed
        return runner

    def _replica_changed(self, replica: Any) -> None:
        endpoint = self.endpoints.get(replica.endpoint)
        if endpoint is not None:
            endpoint.slots_changed()

    @property
    def ready(self) -> bool:
        """Started, and on a cluster every endpoint has a live replica (what /readyz answers)."""
        if not self._ready:
            return False
        return all(e.instances.live() for e in self.endpoints.values())

    @ready.setter
    def ready(self, value: bool) -> None:
        self._ready = value

    async def _connect_cluster(self) -> None:
        """Let the runner join what it runs on (a Ray cluster takes seconds; the pool, nothing)."""
        python_path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        search = [str(self.spec.path.parent), os.getcwd(), *python_path]  # where replicas import entrypoints from
        started = time.perf_counter()
        await self.runner.prepare(search)
        if self.runner.capabilities.replicas:
            self.log.info(
                "cluster joined",
                address=self.spec.cluster.address or "private",
                took_s=round(time.perf_counter() - started, 3),
            )

    def with_overrides(self, spec: Spec) -> Spec:
        if not self.server_overrides:
            return spec
        return dataclasses.replace(spec, server=dataclasses.replace(spec.server, **self.server_overrides))

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, *, watch: bool = True) -> None:
        """Load every endpoint's models (off the loop), then report ready.

        The front is already listening: requests that arrive while models load are queued, not refused.
        """
        checked, self._checked = self._checked, None
        assert checked is not None, "start() runs once"
        try:
            await self._connect_cluster()
            for endpoint in self.endpoints.values():
                entry, placed = checked.entrypoints[endpoint.name], checked.devices[endpoint.name]
                endpoint.serve_models(await self.load_models(endpoint.spec, entry, placed))
        except Exception:
            for endpoint in self.endpoints.values():
                endpoint.end_all(ErrorCode.UNAVAILABLE, "the daemon failed to start")
            raise
        self.apply_torch_threads(self.spec.server)
        self._check_host()
        if watch:
            self._watcher = ConfigWatcher(self.spec.path, self.loop, self.reloader.config_touched)
            self._watcher.start()
        self.ready = True
        self.log.info("ready", endpoints=sorted(self.endpoints), version=__version__)
        systemd.ready(self.status_line())

    async def load_models(self, spec: EndpointSpec, entry: Entrypoint, placed: tuple[str, ...]) -> list[Model]:
        """The endpoint's models, built by the runner: one per device, or on a cluster its replicas
        (those already running with the same make kept)."""
        endpoint = self.endpoints.get(spec.name)
        running = [i.model for i in endpoint.instances.current] if endpoint is not None else []
        models = await self.runner.load(spec, entry, placed, running)
        if self.runner.capabilities.replicas:
            self.log.info("replicas ready", endpoint=spec.name, replicas=len(models))
        return models

    def add_endpoint(self, spec: EndpointSpec) -> Endpoint:
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
        if self.runner.capabilities.replicas:
            for state in ("wanted", "live", "pending", "dead"):
                self.metrics.replicas.labels(spec.name, state).set_function(
                    functools.partial(_replicas, endpoint, state)
                )
        self.endpoints[spec.name] = endpoint
        return endpoint

    def raise_open_files_limit(self, server: ServerSpec) -> None:
        _, warning = hostcheck.raise_open_files_limit(server.max_connections)
        if warning:
            self.log.warning("open files limit", detail=warning)

    async def reload(self) -> None:
        """Reload the config file now (daemon.reloader); returns when the pass is recorded."""
        await self.reloader.reload()

    def request_reload(self) -> None:
        """SIGHUP: reload now, even if the file's content is unchanged (it may redeploy changed code)."""
        self.reloader.request_reload()

    def _check_host(self) -> None:
        self.raise_open_files_limit(self.spec.server)
        code_files = [entrypoints.module_file(e.entrypoint) for e in self.spec.endpoints.values()]
        code = [path for f in code_files if f is not None for path in (f, f.parent)]
        watched = [self.spec.path, self.spec.path.parent, *code]
        for warning in hostcheck.writable_by_others(watched):
            self.log.warning("insecure permissions", detail=warning)

    def apply_torch_threads(self, server: ServerSpec) -> None:
        cpu_calls = sum(
            e.spec.concurrency
            for e in self.endpoints.values()
            for i in e.instances.current
            if i.model.device == "cpu" and i.model.uses_torch
        )
        threads = devices.torch_threads_for(cpu_calls, server.torch_threads)
        if devices.loaded_torch() is not None:
            devices.apply_torch_threads(threads)
            self.log.info("torch threads", threads=threads, cpu_calls_at_once=cpu_calls)
        self.torch_threads = threads

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
        if self.front is not None:
            await self.front.close()
        closing = {future: e.name for e in everything for future in e.close_models()}
        if closing:  # close() frees memory and files; give it a bounded time before exiting
            _, still_closing = await asyncio.wait(closing, timeout=CLOSE_TIMEOUT_S)
            self.unfinished += [f"{closing[f]}: close()" for f in still_closing]
        self.unfinished += [f"{e.name}: a call on {device}" for e in everything for device in e.running_devices()]
        self.runner.shutdown()
        self.log.info("stopped", unfinished=self.unfinished or None)

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

    def cancel(self, request: Request, message: str) -> None:
        """End an admitted request with `cancelled` (the client asked, or went away); a no-op once it ended."""
        if request.owner is not None and not request.done:
            request.owner.cancel(request, message)

    def note_rejected(self, name: str | None, error: ServdError) -> None:
        """Count a refusal for /metrics, under the endpoint's name only if it is one we serve."""
        known = name if name in self.endpoints or any(e.name == name for e in self.retiring) else ""
        self.metrics.note_rejected(known or "", error.code.word)

    def next_http_id(self) -> str:
        return f"http-{next(self._http_ids)}"

    # -- status ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        server = dataclasses.asdict(self.spec.server) | {
            "tokens_file": _str_or_none(self.spec.server.tokens_file),
            "torch_threads": self.spec.server.torch_threads or "auto",
        }
        return {
            "version": __version__,
            "config": str(self.spec.path),
            "generation": self.generation,
            "ready": self.ready,
            "shutting_down": self.shutting_down,
            "uptime_s": round(time.monotonic() - self._started_monotonic, 3),
            "last_reload": self.last_reload,
            "restart_needed": self.restart_needed,
            "torch_threads_in_use": self.torch_threads,  # what server.torch_threads (or auto) resolved to
            "endpoints": sorted(self.endpoints),
            "server": server,
            "cluster": {
                "engine": self.spec.cluster.engine,
                "address": self.spec.cluster.address,
                "namespace": self.spec.cluster.namespace,
            },
        }

    def status_line(self) -> str:
        queued = sum(len(e.queue) for e in self.endpoints.values())
        return f"generation {self.generation}, {len(self.endpoints)} endpoints, {queued} queued"


def _replicas(endpoint: Endpoint, state: str) -> float:
    replicas = endpoint.replicas()
    if replicas is None:
        return 0.0
    if state == "wanted":
        return replicas.wanted
    if state == "pending":
        return replicas.pending
    return replicas.count(ReplicaState(state))


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
