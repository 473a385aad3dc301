"""servd's replicas on a Ray cluster: one Ray actor per replica, servd's queue in front (#17).

A Replica (runners.ray_placement: what it is made from and reserves) is a model whose calls run
in an actor (runners.ray_replica: it builds the model in its own process, on whatever node Ray's
scheduler placed it from `resources`, and runs each batch through `runners.execution.execute`);
the BatchResult comes back as the call's return value. Generator entrypoints use a Ray streaming
generator: each partial is one item.

Threading: `RayRunner.run`, `abandon` and every Replica's state are the loop's. Ray reports on
its own threads (an ObjectRef's future); those only hand the result to the loop
(IOLoop.add_callback). Ray is imported (here and in runners.ray_replica) only with
`cluster.engine: ray`.

Faults: a call that fails because its actor died (process crash, node gone) reports the batch
`lost`; the endpoint puts it back at the head of its queue (Endpoint.requeue). The replica stops
taking batches until Ray has restarted it (a `ready` call answers) or gives up (dead: logged,
shown in /v1/endpoints, not retried by servd). Actors are not detached: they belong to servd's
driver, so Ray ends them when servd exits, however it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tornado.ioloop import IOLoop

from servd.config.spec import ClusterSpec, EndpointSpec
from servd.runners import ray_logs
from servd.runners.entrypoints import Entrypoint, EntrypointError, Model
from servd.runners.ray_placement import (
    Replica,
    ReplicaLost,
    actor_options,
    prepare_environment,
    replica_key,
    unsatisfiable,
    wanted_replicas,
)
from servd.runners.ray_replica import RemoteError, ReplicaActor, described
from servd.runners.seam import (
    BatchResult,
    CancelledBeforeStart,
    Capabilities,
    Job,
    Liner,
    Outcome,
    Replicas,
    ReplicaState,
    ReplicaView,
)

PLACEMENT_WAIT_S = 30.0  # a new replica not placed by then is served once it is (pending meanwhile)
CLOSE_TIMEOUT_S = 10.0
PROBE_AGAIN_S = 0.5  # a replica Ray can't reach yet is asked again this often


# -- the driver side (servd's process) ---------------------------------------------------------


REPLICAS = Capabilities(replicas=True)


class RayRunner:
    """Runs each Job on its Replica's actor; results come back to the loop. Also starts, watches
    and ends replicas. `wake(replica)` tells the daemon a replica became reachable or was lost."""

    def __init__(self, cluster: ClusterSpec, loop: IOLoop, log: Callable[[], Any]) -> None:
        self.cluster = cluster
        self.max_threads = 0
        self._loop = loop
        self._log = log
        self._calls: dict[Job, Any] = {}  # running job -> its ObjectRef (or streaming generator)
        self._streams: set[asyncio.Future[None]] = set()
        self._actor_class: Any = None
        self.wake: Callable[[Replica], None] = lambda replica: None
        self.search_dirs: list[str] = []
        self.connected = False

    # the seam

    @property
    def capabilities(self) -> Capabilities:
        return REPLICAS

    async def prepare(self, search_path: list[str]) -> None:
        """Join the cluster, off the loop (it takes seconds)."""
        await self._loop.run_in_executor(None, self.connect, search_path)
        ray_logs.reclaim_sigterm()  # ray.init gave SIGTERM to its C++ stack dumper (ray_logs.py)

    async def load(
        self, spec: EndpointSpec, entry: Entrypoint, placed: tuple[str, ...], running: Sequence[Model]
    ) -> list[Model]:
        return await self.replicas_for(spec, entry, list(running))

    def describe(self, spec: EndpointSpec, models: Sequence[Model]) -> Replicas | None:
        replicas = [m for m in models if isinstance(m, Replica)]
        wanted = spec.replicas if isinstance(spec.replicas, int) else len(replicas)
        return Replicas(wanted, tuple(ReplicaView(r.state, r.node_id, r.error) for r in replicas))

    def liner(self) -> Liner | None:
        return None  # a call's round trip to an actor is the cost a line saves locally; nothing to chain

    # connection

    def connect(self, search_dirs: list[str]) -> None:
        """Worker thread: join (or start) the cluster. Usage stats stay off unless the user set them."""
        prepare_environment(self.cluster)
        import ray

        kwargs: dict[str, Any] = {
            "address": self.cluster.address or "local",
            "namespace": self.cluster.namespace,
            "configure_logging": False,
            "log_to_driver": True,
        }
        if self.cluster.runtime_env is not None:
            kwargs["runtime_env"] = dict(self.cluster.runtime_env)
        if self.cluster.address is None:
            kwargs["include_dashboard"] = False
        with ray_logs.python_logs_captured():
            ray.init(**kwargs)
        ray_logs.forward_output()
        self.connected = True
        self.search_dirs = search_dirs
        self._actor_class = ray.remote(ReplicaActor)

    def nodes(self) -> list[Mapping[str, float]]:
        """Each live node's total resources (for the unsatisfiable-resources warning)."""
        import ray

        return [node["Resources"] for node in ray.nodes() if node.get("Alive")]  # type: ignore[no-untyped-call]

    def cluster_gpus(self) -> float:
        import ray

        return float(ray.cluster_resources().get("GPU", 0.0))  # type: ignore[no-untyped-call]

    # replicas

    async def replicas_for(self, spec: EndpointSpec, entry: Entrypoint, running: list[Model]) -> list[Model]:
        """The replicas `spec` wants: those running with the same key kept, the rest started.
        Waits until the new ones are ready (or PLACEMENT_WAIT_S for ones Ray can't place yet);
        raises EntrypointError if one fails to start (its constructor raised): nothing retried."""
        key = replica_key(spec, entry)
        count = wanted_replicas(spec, await self._loop.run_in_executor(None, self.cluster_gpus))
        kept = [m for m in running if isinstance(m, Replica) and m.key == key and m.state is not ReplicaState.DEAD][
            :count
        ]
        new = [self._start(spec, entry, key) for _ in range(count - len(kept))]
        warning = unsatisfiable(spec, await self._loop.run_in_executor(None, self.nodes))
        if warning is not None:
            self._log().warning("resources unsatisfiable", detail=warning)
            return [*kept, *new]  # pending until a node that fits joins: nothing to wait for now
        try:
            await self._await_started(new)
        except EntrypointError:
            for replica in new:
                await self._loop.run_in_executor(None, self.close_replica, replica)
            raise
        return [*kept, *new]

    def _start(self, spec: EndpointSpec, entry: Entrypoint, key: tuple[Any, ...]) -> Replica:
        device = spec.devices[0]
        actor = self._actor_class.options(**actor_options(spec)).remote(
            spec.entrypoint, self.search_dirs, device, dict(spec.options)
        )
        replica = Replica(
            call=_never_called, device=device, streams=entry.streams, uses_torch=entry.uses_torch,
            code_mtime=entry.code_mtime, reachable=False, actor=actor, endpoint=spec.name, key=key,
        )  # fmt: skip
        replica.close = functools.partial(self.close_replica, replica)
        replica.started = self._loop.asyncio_loop.create_future()  # type: ignore[attr-defined]
        self._probe(replica)
        return replica

    async def _await_started(self, replicas: list[Replica]) -> None:
        waits = [r.started for r in replicas if r.started is not None]
        if waits:
            await asyncio.wait(waits, timeout=PLACEMENT_WAIT_S)
        for replica in replicas:
            if replica.state is ReplicaState.DEAD:
                raise EntrypointError(f"a replica of {replica.endpoint!r} failed to start: {replica.error}")
            if replica.state is ReplicaState.STARTING:
                self._log().warning("replica pending", endpoint=replica.endpoint, waited_s=PLACEMENT_WAIT_S)

    def _probe(self, replica: Replica) -> None:
        """Ask the actor `ready` (answered once Ray has (re)started it); the answer goes to the loop."""
        if replica.probing or replica.state is ReplicaState.DEAD:
            return
        replica.probing = True
        future = replica.actor.ready.remote().future()
        future.add_done_callback(lambda f: self._loop.add_callback(self._probed, replica, f))

    def _probed(self, replica: Replica, future: Any) -> None:
        replica.probing = False
        if replica.state is ReplicaState.DEAD:
            return
        try:
            _, replica.node_id = future.result()
        except Exception as exc:  # noqa: BLE001 - the actor is gone for good (or its constructor raised)
            if _is_transient(exc):  # Ray is still restarting it, or can't reach it yet: ask again
                self._loop.call_later(PROBE_AGAIN_S, self._probe, replica)
                return
            replica.state, replica.reachable, replica.error = ReplicaState.DEAD, False, _cause(exc)
            self._log().error("replica dead", endpoint=replica.endpoint, error=replica.error)
        else:
            was = replica.state
            replica.state, replica.reachable = ReplicaState.LIVE, True
            if was is ReplicaState.RESTARTING:
                self._log().info("replica restarted", endpoint=replica.endpoint, node=replica.node_id)
        if replica.started is not None and not replica.started.done():
            replica.started.set_result(None)
        self.wake(replica)

    def _lost(self, replica: Replica, exc: BaseException) -> None:
        if replica.state in (ReplicaState.LIVE, ReplicaState.STARTING):
            replica.state, replica.reachable = ReplicaState.RESTARTING, False
            self._log().warning("replica lost", endpoint=replica.endpoint, error=_cause(exc))
            self.wake(replica)
        self._probe(replica)

    def close_replica(self, replica: Replica) -> None:
        """Worker thread: the model's close() in the actor, then the actor ended (once)."""
        import ray

        was_live = replica.state is ReplicaState.LIVE  # a pending or lost replica has no model to close
        replica.state, replica.reachable = ReplicaState.DEAD, False
        actor, replica.actor = replica.actor, None
        if actor is None:
            return
        if was_live:
            with contextlib.suppress(Exception):  # a replica lost meanwhile has nothing to close
                ray.get(actor.close.remote(), timeout=CLOSE_TIMEOUT_S)
        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)

    # Runner

    def run(self, job: Job) -> None:
        replica = job.model
        assert isinstance(replica, Replica)
        if replica.actor is None:  # closed between dispatch and now: back to the queue
            self._loop.add_callback(self._report_lost, job, replica, ReplicaLost("the replica was closed"), set())
            return
        if replica.streams:
            generator = replica.actor.run_stream.options(num_returns="streaming").remote(job.inputs, job.batched)
            self._calls[job] = generator
            task = asyncio.ensure_future(self._consume(job, replica, generator))
            self._streams.add(task)
            task.add_done_callback(self._streams.discard)
            return
        ref = replica.actor.run.remote(job.inputs, job.batched)
        self._calls[job] = ref
        ref.future().add_done_callback(lambda f: self._loop.add_callback(self._done, job, replica, f))

    def _done(self, job: Job, replica: Replica, future: Any) -> None:
        self._calls.pop(job, None)
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001 - every way a remote call ends is reported on
            if _is_lost(exc):
                return self._report_lost(job, replica, exc, set())
            result = BatchResult.failed(job.inputs, _failed_call(exc))
        job.on_done(result)

    async def _consume(self, job: Job, replica: Replica, generator: Any) -> None:
        streamed: set[int] = set()
        result: BatchResult | None = None
        try:
            async for ref in generator:
                item = await ref
                if isinstance(item, BatchResult):
                    result = item
                    break
                offset, texts = item
                streamed.update(range(offset, offset + len(texts)))
                job.on_partial(offset, texts)
        except Exception as exc:  # noqa: BLE001 - every way a remote call ends is reported on
            self._calls.pop(job, None)
            if _is_lost(exc):
                return self._report_lost(job, replica, exc, streamed)
            result = BatchResult.failed(job.inputs, _failed_call(exc))
        self._calls.pop(job, None)
        if result is None:
            result = BatchResult.failed(job.inputs, RemoteError("the stream ended early"))
        job.on_done(result)

    def _report_lost(self, job: Job, replica: Replica, exc: BaseException, streamed: set[int]) -> None:
        self._lost(replica, exc)
        text = _cause(exc)
        outcomes = [Outcome(error=ReplicaLost(text, i in streamed)) for i in range(len(job.inputs))]
        job.on_done(BatchResult(outcomes, 0.0, lost=True))

    def abandon(self, job: Job) -> None:
        """Every request of `job` ended: cancel its call on Ray (a queued call never runs; a running
        one sees is_canceled() between partials, or runs to its end)."""
        import ray

        call = self._calls.get(job)
        if call is not None:
            with contextlib.suppress(Exception):
                ray.cancel(call)

    def resize(self, max_threads: int) -> None:
        """server.max_threads sizes the local pool; a replica's slots are its `concurrency`."""

    def shutdown(self) -> None:
        """Disconnect the driver: Ray ends every actor it owns (already closed by the drain)."""
        if self.connected:
            import ray

            ray.shutdown()
            self.connected = False


def _never_called(data: Any) -> Any:
    raise RuntimeError("a replica's model runs in its actor, never in servd's process")


def _is_lost(exc: BaseException) -> bool:
    from ray import exceptions

    return isinstance(exc, (exceptions.RayActorError, exceptions.ActorUnavailableError, exceptions.NodeDiedError))


def _failed_call(exc: BaseException) -> BaseException:
    """A call that failed on Ray's side: cancelled (ray.cancel, its requests had all ended: no
    batch time to learn from), or another error of Ray's, described."""
    from ray import exceptions

    if isinstance(exc, exceptions.TaskCancelledError):
        return CancelledBeforeStart("the call was cancelled on Ray")
    return described(exc)


def _is_transient(exc: BaseException) -> bool:
    from ray import exceptions

    return isinstance(exc, exceptions.ActorUnavailableError)


def _cause(exc: BaseException) -> str:
    """Ray's error in one line: its kind, and the innermost `SomeError: message` line of its text
    (a constructor's own exception, inside Ray's traceback), else its first line."""
    lines = str(exc).strip().splitlines()
    errors = [line.strip() for line in lines if _ERROR_LINE.match(line)]
    detail = errors[-1] if errors else (lines[0] if lines else "")
    return f"{type(exc).__name__}: {detail}"[:500]


_ERROR_LINE = re.compile(r"^\s*[\w.]+(Error|Exception): ")
