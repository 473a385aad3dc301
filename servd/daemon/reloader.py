"""Reload: load and check the whole file off the loop, plan, then apply it step by step, always recorded.

Loop thread only, except `_load_new`, which runs on a worker with plain values. The Reloader is its
own object: it keeps reload's scheduling state (one pass at a time, one more if the file changed
meanwhile) and reaches the daemon only through `ReloadTarget`, the list of what a reload reads and
changes. Its jobs: scheduling passes, loading, the table of server-key appliers, per-step apply,
retiring endpoints and the reload record. Every pass ends recorded (applied, invalid or failed)
and with READY=1, whatever goes wrong inside it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TextIO

from tornado.ioloop import IOLoop

from servd.config.plan import Plan, plan
from servd.config.schema import Problem
from servd.config.spec import EndpointSpec, ServerSpec, Spec, SpecError
from servd.core.endpoint import Endpoint
from servd.daemon import auth, gcpolicy, systemd
from servd.daemon.loading import Checked, load_checked
from servd.obs import logs
from servd.obs.metrics import Metrics
from servd.runners import devices, entrypoints
from servd.runners.entrypoints import Entrypoint, Model
from servd.runners.seam import Runner


class Front(Protocol):
    """The web front as the daemon sees it: told of each new server spec, closed at shutdown."""

    def apply(self, server: ServerSpec) -> None: ...

    async def close(self) -> None: ...


class LoadFailed(Exception):
    """A reload whose file is valid but whose new models could not be built; nothing was switched."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


class ReloadTarget(Protocol):
    """What a reload reads and changes of the daemon: the running spec, the endpoints, what the
    server keys reach (runner, log, front, tokens), the generation and the reload's record.
    The Daemon is the one implementation; naming it here keeps reload's reach explicit."""

    spec: Spec
    loop: IOLoop
    log: Any
    log_stream: TextIO | None
    metrics: Metrics
    runner: Runner
    tokens: tuple[auth.Token, ...]
    endpoints: dict[str, Endpoint]
    retiring: list[Endpoint]
    front: Front | None
    shutting_down: bool
    generation: int
    last_reload: dict[str, Any] | None
    reload_observers: list[Callable[[dict[str, Any]], None]]
    restart_needed: list[str]
    background: set[asyncio.Future[None]]

    def with_overrides(self, spec: Spec) -> Spec: ...
    def add_endpoint(self, spec: EndpointSpec) -> Endpoint: ...
    def apply_torch_threads(self, server: ServerSpec) -> None: ...
    def raise_open_files_limit(self, server: ServerSpec) -> None: ...
    def status_line(self) -> str: ...
    async def load_models(self, spec: EndpointSpec, entry: Entrypoint, placed: tuple[str, ...]) -> list[Model]: ...


class Reloader:
    """The daemon's reload: its own scheduling state (one pass at a time, one more if the file
    changed meanwhile), and the daemon as the one collaborator it changes, through ReloadTarget."""

    def __init__(self, daemon: ReloadTarget) -> None:
        self.daemon = daemon
        self._config_digest = digest(daemon.spec.path)
        self._reload_task: asyncio.Future[None] | None = None
        self._reload_again = False

    def request_reload(self) -> None:
        """SIGHUP: reload now, even if the file's content is unchanged (it may redeploy changed code)."""
        self._schedule_reload()

    def config_touched(self) -> None:
        """The watcher saw activity next to the config: reload only if its content changed."""
        if not self.daemon.shutting_down and digest(self.daemon.spec.path) != self._config_digest:
            self._schedule_reload()

    def _schedule_reload(self) -> None:
        if self.daemon.shutting_down:
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
                systemd.ready(self.daemon.status_line())
            if not self._reload_again or self.daemon.shutting_down:
                return

    async def _reload_once(self, started: float) -> None:
        content = digest(self.daemon.spec.path)
        code_mtimes = self._code_mtimes()  # read here: endpoint state is the loop's
        try:
            new, stale, tokens = await self.daemon.loop.run_in_executor(None, self._load_new, code_mtimes)
        except SpecError as exc:
            self._config_digest = content
            self._record_reload("invalid", started, error=str(exc))
            return
        except (OSError, auth.TokensError) as exc:  # the tokens file
            self._config_digest = content
            self._record_reload("failed", started, error=str(exc))
            return
        self._config_digest = content
        change = plan(self.daemon.spec, new.spec, stale)
        try:
            loaded = await self._load_changed_models(change, new)
        except LoadFailed as exc:
            self._record_reload("failed", started, error=str(exc))
            return
        if self.daemon.shutting_down:  # a shutdown began while models loaded: don't switch, just release
            await self._close_models(loaded)
            return
        self.daemon.tokens = tokens  # read with the file: an edited tokens file applies on every reload (SIGHUP)
        failures = self._apply(change, new.spec, loaded)
        if failures:
            self._record_reload("failed", started, changes=change.summary(), error="; ".join(failures))
        else:
            self._record_reload("applied", started, changes=change.summary())

    def _code_mtimes(self) -> dict[str, float]:
        """Each served entrypoint and the mtime of its module when its oldest live model was built."""
        return {
            e.spec.entrypoint: min(i.model.code_mtime for i in e.instances.current)
            for e in self.daemon.endpoints.values()
            if e.instances.current
        }

    def _load_new(self, code_mtimes: Mapping[str, float]) -> tuple[Checked, set[str], tuple[auth.Token, ...]]:
        """Worker thread, plain values only: the new file checked in full, which entrypoints have
        new code on disk, and the tokens (an unreadable tokens file fails the reload, not requests)."""
        stale = {ref for ref, mtime in code_mtimes.items() if entrypoints.changed_since(ref, mtime)}
        checked = load_checked(self.daemon.spec.path, fresh_imports=True)
        checked = dataclasses.replace(
            checked, spec=self.daemon.with_overrides(checked.spec)
        )  # --host/--port outlive reloads
        return checked, stale, auth.read_tokens(checked.spec.server.tokens_file)

    async def _load_changed_models(self, change: Plan, new: Checked) -> dict[str, list[Model]]:
        """New models for added and remodeled endpoints, all loaded before anything is switched."""
        loaded: dict[str, list[Model]] = {}
        for spec in (*change.added, *change.remodeled):
            try:
                loaded[spec.name] = await self.daemon.load_models(
                    spec, new.entrypoints[spec.name], new.devices[spec.name]
                )
            except (entrypoints.EntrypointError, devices.DeviceError) as exc:
                await self._close_models(loaded)
                raise LoadFailed(new.spec.problem(f"endpoints.{spec.name}.entrypoint", str(exc))) from exc
        return loaded

    async def _close_models(self, loaded: dict[str, list[Model]]) -> None:
        """Release models loaded for a reload that won't switch to them; never one served now (a
        cluster replica a reload kept because only the count of replicas changed)."""
        served = {id(i.model) for e in self.daemon.endpoints.values() for i in e.instances.current}
        for models in loaded.values():
            for model in models:
                if model.close is not None and id(model) not in served:
                    await self.daemon.loop.run_in_executor(None, model.close)

    def _apply(self, change: Plan, new: Spec, loaded: dict[str, list[Model]]) -> list[str]:
        """The only place a reload writes running state; synchronous, so no request sees half of it.

        Each step is applied on its own: one that raises (a bug) is reported, the others still
        apply, and the running spec keeps the old value of what failed, so the next reload tries
        it again. Returns what failed.
        """
        failures: list[str] = []
        server = self._apply_server(change, new.server, failures)
        endpoints = dict(self.daemon.spec.endpoints)
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
        self.daemon.spec = dataclasses.replace(
            new, server=server, endpoints=endpoints, cluster=self.daemon.spec.cluster
        )
        self.daemon.generation += 1
        self.daemon.metrics.generation.set(self.daemon.generation)
        self._step("set torch threads", functools.partial(self.daemon.apply_torch_threads, server), failures)
        return failures

    def _apply_server(self, change: Plan, new: ServerSpec, failures: list[str]) -> ServerSpec:
        """Apply each changed server key through its applier; a key that failed keeps its old value."""
        applied = new
        for key in change.server_changed:
            applier = SERVER_APPLIERS[key]
            if applier is not None and not self._step(
                f"apply server.{key}", functools.partial(applier, self, new), failures
            ):
                applied = dataclasses.replace(applied, **{key: getattr(self.daemon.spec.server, key)})
        self.daemon.restart_needed = change.restart_keys()
        if change.needs_restart:
            applied = dataclasses.replace(applied, host=self.daemon.spec.server.host, port=self.daemon.spec.server.port)
            self.daemon.log.warning("restart needed to apply", keys=self.daemon.restart_needed)
        return applied

    def _step(self, what: str, step: Callable[[], None], failures: list[str]) -> bool:
        try:
            step()
        except Exception as exc:  # one broken step must not leave the rest undone
            failures.append(f"{what}: {type(exc).__name__}: {exc}")
            self.daemon.log.error("reload step failed", step=what, exc_info=exc)
            return False
        return True

    def _retune(self, spec: EndpointSpec) -> None:
        self.daemon.endpoints[spec.name].retune(spec)

    def _remodel(self, spec: EndpointSpec, loaded: dict[str, list[Model]]) -> None:
        endpoint = self.daemon.endpoints[spec.name]
        endpoint.retune(spec)
        endpoint.serve_models(loaded[spec.name])

    def _add(self, spec: EndpointSpec, loaded: dict[str, list[Model]]) -> None:
        self.daemon.add_endpoint(spec).serve_models(loaded[spec.name])

    def apply_log(self, server: ServerSpec) -> None:
        logs.configure(server.log, self.daemon.log_stream)
        self.daemon.log = logs.get_logger()
        for endpoint in [*self.daemon.endpoints.values(), *self.daemon.retiring]:
            endpoint.set_log(self.daemon.log)

    def apply_listener(self, server: ServerSpec) -> None:
        if self.daemon.front is not None:
            self.daemon.front.apply(server)

    def _retire(self, name: str) -> None:
        endpoint = self.daemon.endpoints.pop(name)
        endpoint.accepting = False
        self.daemon.retiring.append(endpoint)
        task = asyncio.ensure_future(self._finish_retiring(endpoint))
        self.daemon.background.add(task)
        task.add_done_callback(self.daemon.background.discard)

    async def _finish_retiring(self, endpoint: Endpoint) -> None:
        await endpoint.wait_idle()
        closing = endpoint.close_models()
        self.daemon.retiring.remove(endpoint)
        name = endpoint.name
        if name not in self.daemon.endpoints and not any(e.name == name for e in self.daemon.retiring):
            self.daemon.metrics.forget_endpoint(name)
        self.daemon.log.info("endpoint removed", endpoint=name)
        if closing:  # close() runs on a worker and holds the model until it returns
            await asyncio.wait(closing, timeout=self.daemon.spec.server.drain_timeout_s)
        del endpoint, closing
        gcpolicy.collect_removed()

    def _record_reload(
        self, result: str, started: float, *, exc_info: BaseException | None = None, **details: Any
    ) -> None:
        took = round(time.perf_counter() - started, 4)
        self.daemon.last_reload = {
            "at": time.time(), "result": result, "took_s": took, "generation": self.daemon.generation, **details
        }  # fmt: skip
        self.daemon.metrics.reloads.labels(result).inc()
        if result == "applied":
            self.daemon.log.info("reload", result=result, generation=self.daemon.generation, took_s=took, **details)
        else:
            self.daemon.log.error(
                "reload", result=result, generation=self.daemon.generation, took_s=took, exc_info=exc_info, **details
            )
        self._tell_reload_observers(self.daemon.last_reload)

    def _tell_reload_observers(self, record: dict[str, Any]) -> None:
        """Hand the reload's record on (the console's live feed); an observer's bug can't undo the reload."""
        for observer in list(self.daemon.reload_observers):
            try:
                observer(record)
            except Exception as exc:  # the reload is done and recorded: log and go on
                self.daemon.log.error("reload observer failed", observer=repr(observer), exc_info=exc)


ServerApplier = Callable[[Reloader, ServerSpec], None]
READ_LIVE = None  # read from daemon.spec where it is used (per request or per connection): nothing to do


def _apply_connection_limit(reloader: Reloader, server: ServerSpec) -> None:
    """The open-files limit and the listener's count of open connections both follow max_connections."""
    reloader.daemon.raise_open_files_limit(server)
    reloader.apply_listener(server)


# How each server key reaches the running daemon when a reload changes it. Every ServerSpec field
# has an entry (tests/test_layering.py checks), so a new setting can't be added without deciding.
# host and port are restart-only: reload.plan reports them and nothing here applies them.
SERVER_APPLIERS: dict[str, ServerApplier | None] = {
    "max_threads": lambda reloader, server: reloader.daemon.runner.resize(server.max_threads),
    "log": Reloader.apply_log,
    "tokens_file": READ_LIVE,  # the tokens read with the file are installed by every reload
    "max_message_bytes": Reloader.apply_listener,
    "ping_interval_s": Reloader.apply_listener,
    "max_connections": _apply_connection_limit,
    "body_timeout_s": Reloader.apply_listener,  # handlers read it live; the listener's backstop is set here
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


def digest(path: Path) -> str | None:
    """Content hash of the config file (None if unreadable), to tell a real change from a touch."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
