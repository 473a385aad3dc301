"""The daemon: owns the running Spec, the endpoints and the worker pool; starts, reloads, drains.

Loop thread only. Signals and the file watcher only schedule work here (add_callback /
add_signal_handler); `start`, `reload` and `shutdown` do it, in a fixed order. The web front
(listener, application, handlers) is built and wired by the composition root (`servd.service`);
the daemon knows it only as a `Front` it hands each new ServerSpec to and closes at shutdown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import itertools
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TextIO

from tornado.ioloop import IOLoop

from servd import __version__, auth, devices, entrypoints, gcpolicy, hostcheck, logs, systemd
from servd.check import Checked, load_checked
from servd.endpoint import Endpoint
from servd.entrypoints import Entrypoint, Model
from servd.errors import ErrorCode, ServdError
from servd.metrics import Metrics
from servd.reload import Plan, plan
from servd.request import Request
from servd.schema import Problem
from servd.spec import EndpointSpec, ServerSpec, Spec, SpecError
from servd.watch import ConfigWatcher
from servd.workers import LocalRunner, Runner

CLOSE_TIMEOUT_S = 10.0


class Front(Protocol):
    """The web front as the daemon sees it: told of each new server spec, closed at shutdown."""

    def apply(self, server: ServerSpec) -> None: ...

    async def close(self) -> None: ...


class LoadFailed(Exception):
    """A reload whose file is valid but whose new models could not be built; nothing was switched."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


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
        spec = self._overridden(checked.spec)
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
        self.connections: set[Any] = set()  # open websockets; the front closes them at shutdown
        self.front: Front | None = None
        self.ready = False
        self.shutting_down = False
        self.generation = 1
        self.started_at = time.time()
        self.last_reload: dict[str, Any] | None = None
        self.reload_observers: list[Callable[[dict[str, Any]], None]] = []  # told of each recorded reload (live.py)
        self.restart_needed: list[str] = []
        self.unfinished: list[str] = []  # after shutdown: what could not be waited for
        self.torch_threads: int | None = None  # what torch_threads (or auto) resolved to
        self._checked: Checked | None = checked
        self._http_ids = itertools.count(1)
        self._watcher: ConfigWatcher | None = None
        self._config_digest = _digest(spec.path)
        self._reload_task: asyncio.Future[None] | None = None
        self._reload_again = False
        self._background: set[asyncio.Future[None]] = set()
        self.metrics.generation.set(self.generation)
        for endpoint_spec in spec.endpoints.values():
            self._add_endpoint(endpoint_spec)

    def _overridden(self, spec: Spec) -> Spec:
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
            for endpoint in self.endpoints.values():
                entry, placed = checked.entrypoints[endpoint.name], checked.devices[endpoint.name]
                endpoint.serve_models(await self.load_models(endpoint.spec, entry, placed))
        except Exception:
            for endpoint in self.endpoints.values():
                endpoint.end_all(ErrorCode.UNAVAILABLE, "the daemon failed to start")
            raise
        self._apply_torch_threads(self.spec.server)
        self._check_host()
        if watch:
            self._watcher = ConfigWatcher(self.spec.path, self.loop, self._config_touched)
            self._watcher.start()
        self.ready = True
        self.log.info("ready", endpoints=sorted(self.endpoints), version=__version__)
        systemd.ready(self.status_line())

    async def load_models(self, spec: EndpointSpec, entry: Entrypoint, placed: tuple[str, ...]) -> list[Model]:
        """One model per device, built on a worker thread: constructors may load weights for minutes."""
        models = []
        for device in placed:
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

    def _check_host(self) -> None:
        self._raise_open_files_limit(self.spec.server)
        code_files = [entrypoints.module_file(e.entrypoint) for e in self.spec.endpoints.values()]
        code = [path for f in code_files if f is not None for path in (f, f.parent)]
        watched = [self.spec.path, self.spec.path.parent, *code]
        for warning in hostcheck.writable_by_others(watched):
            self.log.warning("insecure permissions", detail=warning)

    def _raise_open_files_limit(self, server: ServerSpec) -> None:
        _, warning = hostcheck.raise_open_files_limit(server.max_connections)
        if warning:
            self.log.warning("open files limit", detail=warning)

    def _apply_torch_threads(self, server: ServerSpec) -> None:
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
        """Load and check the whole file, then apply it per endpoint; a bad file changes nothing.

        Every pass ends recorded (applied, invalid or failed, with the error) and with READY=1,
        whatever goes wrong inside it, a bug of servd's included.
        """
        while True:
            self._reload_again = False
            systemd.reloading()
            started = time.perf_counter()
            try:
                await self._reload_once(started)
            except Exception as exc:  # noqa: BLE001 - a bug of ours: record it, keep serving
                error = f"servd could not complete the reload: {type(exc).__name__}: {exc}"
                self._record_reload("failed", started, error=error, exc_info=exc)
            finally:
                systemd.ready(self.status_line())
            if not self._reload_again or self.shutting_down:
                return

    async def _reload_once(self, started: float) -> None:
        digest = _digest(self.spec.path)
        code_mtimes = self._code_mtimes()  # read here: endpoint state is the loop's
        try:
            new, stale = await self.loop.run_in_executor(None, self._load_new, code_mtimes)
        except SpecError as exc:
            self._config_digest = digest
            self._record_reload("invalid", started, error=str(exc))
            return
        except (OSError, auth.TokensError) as exc:  # the tokens file
            self._config_digest = digest
            self._record_reload("failed", started, error=str(exc))
            return
        self._config_digest = digest
        change = plan(self.spec, new.spec, stale)
        try:
            loaded = await self._load_changed_models(change, new)
        except LoadFailed as exc:
            self._record_reload("failed", started, error=str(exc))
            return
        if self.shutting_down:  # a shutdown began while models loaded: don't switch, just release
            await self._close_models(loaded)
            return
        failures = self._apply(change, new.spec, loaded)
        if failures:
            self._record_reload("failed", started, changes=change.summary(), error="; ".join(failures))
        else:
            self._record_reload("applied", started, changes=change.summary())

    def _code_mtimes(self) -> dict[str, float]:
        """Each served entrypoint and the mtime of its module when its oldest live model was built."""
        return {
            e.spec.entrypoint: min(i.model.code_mtime for i in e.instances.current)
            for e in self.endpoints.values()
            if e.instances.current
        }

    def _load_new(self, code_mtimes: Mapping[str, float]) -> tuple[Checked, set[str]]:
        """Worker thread, plain values only: the new file checked in full, and which entrypoints
        have new code on disk."""
        stale = {ref for ref, mtime in code_mtimes.items() if entrypoints.changed_since(ref, mtime)}
        checked = load_checked(self.spec.path, fresh_imports=True)
        checked = dataclasses.replace(checked, spec=self._overridden(checked.spec))  # --host/--port outlive reloads
        auth.read_tokens(checked.spec.server.tokens_file)  # an unreadable tokens file fails the reload, not requests
        return checked, stale

    async def _load_changed_models(self, change: Plan, new: Checked) -> dict[str, list[Model]]:
        """New models for added and remodeled endpoints, all loaded before anything is switched."""
        loaded: dict[str, list[Model]] = {}
        for spec in (*change.added, *change.remodeled):
            try:
                loaded[spec.name] = await self.load_models(spec, new.entrypoints[spec.name], new.devices[spec.name])
            except (entrypoints.EntrypointError, devices.DeviceError) as exc:
                await self._close_models(loaded)
                raise LoadFailed(new.spec.problem(f"endpoints.{spec.name}.entrypoint", str(exc))) from exc
        return loaded

    async def _close_models(self, loaded: dict[str, list[Model]]) -> None:
        for models in loaded.values():
            for model in models:
                if model.close is not None:
                    await self.loop.run_in_executor(None, model.close)

    def _apply(self, change: Plan, new: Spec, loaded: dict[str, list[Model]]) -> list[str]:
        """The only place a reload writes running state; synchronous, so no request sees half of it.

        Each step is applied on its own: one that raises (a bug) is reported, the others still
        apply, and the running spec keeps the old value of what failed, so the next reload tries
        it again. Returns what failed.
        """
        failures: list[str] = []
        server = self._apply_server(change, new.server, failures)
        endpoints = dict(self.spec.endpoints)
        for name in change.removed:
            if self._step(f"remove endpoint {name!r}", functools.partial(self._retire, name), failures):
                del endpoints[name]
        steps: list[tuple[str, EndpointSpec, Callable[[], None]]] = []
        steps += [(f"retune endpoint {s.name!r}", s, functools.partial(self._retune, s)) for s in change.retuned]
        steps += [
            (f"swap the model of {s.name!r}", s, functools.partial(self._remodel, s, loaded)) for s in change.remodeled
        ]
        steps += [(f"add endpoint {s.name!r}", s, functools.partial(self._add, s, loaded)) for s in change.added]
        for what, spec, step in steps:
            if self._step(what, step, failures):
                endpoints[spec.name] = spec
        self.spec = dataclasses.replace(new, server=server, endpoints=endpoints)
        self.generation += 1
        self.metrics.generation.set(self.generation)
        self._step("set torch threads", functools.partial(self._apply_torch_threads, server), failures)
        return failures

    def _apply_server(self, change: Plan, new: ServerSpec, failures: list[str]) -> ServerSpec:
        """Apply each changed server key through its applier; a key that failed keeps its old value."""
        applied = new
        for key in change.server_changed:
            applier = SERVER_APPLIERS[key]
            if applier is not None and not self._step(
                f"apply server.{key}", functools.partial(applier, self, new), failures
            ):
                applied = dataclasses.replace(applied, **{key: getattr(self.spec.server, key)})
        if "tokens_file" not in change.server_changed and new.tokens_file is not None:
            # the same file, perhaps edited: SIGHUP after removing a token must revoke it
            self._step("re-read server.tokens_file", functools.partial(self._apply_tokens, new), failures)
        self.restart_needed = [f"server.{key}" for key in change.needs_restart]
        if self.restart_needed:
            applied = dataclasses.replace(applied, host=self.spec.server.host, port=self.spec.server.port)
            self.log.warning("restart needed to apply", keys=self.restart_needed)
        return applied

    def _step(self, what: str, step: Callable[[], None], failures: list[str]) -> bool:
        try:
            step()
        except Exception as exc:  # one broken step must not leave the rest undone
            failures.append(f"{what}: {type(exc).__name__}: {exc}")
            self.log.error("reload step failed", step=what, exc_info=exc)
            return False
        return True

    def _retune(self, spec: EndpointSpec) -> None:
        self.endpoints[spec.name].retune(spec)

    def _remodel(self, spec: EndpointSpec, loaded: dict[str, list[Model]]) -> None:
        endpoint = self.endpoints[spec.name]
        endpoint.retune(spec)
        endpoint.serve_models(loaded[spec.name])

    def _add(self, spec: EndpointSpec, loaded: dict[str, list[Model]]) -> None:
        self._add_endpoint(spec).serve_models(loaded[spec.name])

    def _apply_log(self, server: ServerSpec) -> None:
        logs.configure(server.log, self.log_stream)
        self.log = logs.get_logger()
        for endpoint in [*self.endpoints.values(), *self.retiring]:
            endpoint.set_log(self.log)

    def _apply_tokens(self, server: ServerSpec) -> None:
        self.tokens = auth.read_tokens(server.tokens_file)

    def _apply_listener(self, server: ServerSpec) -> None:
        if self.front is not None:
            self.front.apply(server)

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

    def _record_reload(
        self, result: str, started: float, *, exc_info: BaseException | None = None, **details: Any
    ) -> None:
        took = round(time.perf_counter() - started, 4)
        self.last_reload = {
            "at": time.time(), "result": result, "took_s": took, "generation": self.generation, **details
        }  # fmt: skip
        self.metrics.reloads.labels(result).inc()
        if result == "applied":
            self.log.info("reload", result=result, generation=self.generation, took_s=took, **details)
        else:
            self.log.error(
                "reload", result=result, generation=self.generation, took_s=took, exc_info=exc_info, **details
            )
        self._tell_reload_observers(self.last_reload)

    def _tell_reload_observers(self, record: dict[str, Any]) -> None:
        """Hand the reload's record on (the console's live feed); an observer's bug can't undo the reload."""
        for observer in list(self.reload_observers):
            try:
                observer(record)
            except Exception as exc:  # the reload is done and recorded: log and go on
                self.log.error("reload observer failed", observer=repr(observer), exc_info=exc)

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
            "uptime_s": round(time.time() - self.started_at, 3),
            "last_reload": self.last_reload,
            "restart_needed": self.restart_needed,
            "torch_threads_in_use": self.torch_threads,  # what server.torch_threads (or auto) resolved to
            "endpoints": sorted(self.endpoints),
            "server": server,
        }

    def status_line(self) -> str:
        queued = sum(len(e.queue) for e in self.endpoints.values())
        return f"generation {self.generation}, {len(self.endpoints)} endpoints, {queued} queued"


ServerApplier = Callable[[Daemon, ServerSpec], None]
READ_LIVE = None  # read from daemon.spec where it is used (per request or per connection): nothing to do

# How each server key reaches the running daemon when a reload changes it. Every ServerSpec field
# has an entry (tests/test_layering.py checks), so a new setting can't be added without deciding.
# host and port are restart-only: reload.plan reports them and nothing here applies them.
SERVER_APPLIERS: dict[str, ServerApplier | None] = {
    "max_threads": lambda daemon, server: daemon.runner.resize(server.max_threads),
    "log": Daemon._apply_log,
    "tokens_file": Daemon._apply_tokens,
    "max_message_bytes": Daemon._apply_listener,
    "ping_interval_s": Daemon._apply_listener,
    "max_connections": Daemon._raise_open_files_limit,
    "torch_threads": READ_LIVE,  # applied by _apply_torch_threads after every reload
    "max_client_buffer_bytes": READ_LIVE,
    "allowed_origins": READ_LIVE,
    "allowed_hosts": READ_LIVE,
    "max_depth": READ_LIVE,
    "drain_timeout_s": READ_LIVE,
    "console": READ_LIVE,
    "host": READ_LIVE,
    "port": READ_LIVE,
}


def _digest(path: Path) -> str | None:
    """Content hash of the config file (None if unreadable), to tell a real change from a touch."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
