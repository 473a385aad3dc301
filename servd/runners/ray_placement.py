"""What a Ray replica is made from and what it reserves: the environment, the Replica record, its
key, how many an endpoint wants, its reservation in Ray's terms, and whether a cluster can hold it.

Pure values and functions of a spec (plus an import check for Ray); no Ray call is made here, so
`servd check` can use them before any cluster is joined. runners.ray drives the replicas.
Loop thread (a Replica's fields are the loop's); `require_ray` runs wherever the check runs.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from servd.config.spec import ClusterSpec, EndpointSpec
from servd.runners.entrypoints import Entrypoint, EntrypointError, Model
from servd.runners.seam import ReplicaState

MAX_RESTARTS = 3  # Ray restarts a replica whose process or node died this many times, then it is dead
INSTALL_HINT = "pip install 'servd[ray]'"


class RayMissing(EntrypointError):
    """cluster.engine: ray without Ray installed."""


def prepare_environment(cluster: ClusterSpec) -> None:
    """Before Ray is first imported (it reads these then): no usage statistics unless the user set
    RAY_USAGE_STATS_ENABLED; for a private instance, loopback addresses kept as 127.0.0.1 (Ray
    otherwise swaps in the host's routable address and listens there)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if cluster.address is None:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def require_ray(cluster: ClusterSpec) -> None:
    """Raise RayMissing, naming the extra to install, if Ray can't be imported."""
    prepare_environment(cluster)
    try:
        import ray  # noqa: F401 - only whether it imports
    except ImportError as exc:
        raise RayMissing(f"cluster.engine: ray needs Ray, which is not installed ({exc}); {INSTALL_HINT}") from None


class ReplicaLost(Exception):
    """The actor running a call died (its process or node); `streamed`: the request had sent partials."""

    def __init__(self, message: str, streamed: bool = False) -> None:
        super().__init__(message)
        self.streamed = streamed


@dataclass(eq=False)
class Replica(Model):
    """One actor serving an endpoint; only a LIVE one is reachable."""

    actor: Any = None
    endpoint: str = ""
    key: tuple[Any, ...] = ()
    state: ReplicaState = ReplicaState.STARTING
    error: str | None = None
    node_id: str | None = None
    probing: bool = False
    started: asyncio.Future[None] | None = field(default=None, repr=False)


def replica_key(spec: EndpointSpec, entry: Entrypoint) -> tuple[Any, ...]:
    """What a replica is made from: equal keys mean a running replica can be kept on reload."""
    return (*spec.model_key, repr(sorted(spec.resources.items())), spec.concurrency, entry.code_mtime)


def wanted_replicas(spec: EndpointSpec, cluster_gpus: float) -> int:
    """`replicas` as a count: per_gpu is one per GPU in the cluster (each reserving one)."""
    if spec.replicas == "per_gpu":
        per = spec.resources.get("num_gpus") or 1.0
        return int(cluster_gpus // per)
    return int(spec.replicas)


@dataclass(frozen=True)
class Reservation:
    """What one replica of an endpoint reserves, in Ray's terms (from `resources`)."""

    num_cpus: float
    num_gpus: float
    memory: int | None  # bytes
    custom: dict[str, float]

    @classmethod
    def of(cls, spec: EndpointSpec) -> Reservation:
        custom = dict(spec.resources)
        cpus = custom.pop("num_cpus", 1.0)
        gpus = custom.pop("num_gpus", 0.0) or (1.0 if spec.replicas == "per_gpu" else 0.0)
        memory_gb = custom.pop("memory_gb", None)
        return cls(cpus, gpus, int(memory_gb * 1024**3) if memory_gb else None, custom)


def actor_options(spec: EndpointSpec) -> dict[str, Any]:
    """Ray actor options from `resources` (and `concurrency`: one more thread for ready/close)."""
    reserved = Reservation.of(spec)
    options: dict[str, Any] = {
        "num_cpus": reserved.num_cpus,
        "num_gpus": reserved.num_gpus,
        "max_restarts": MAX_RESTARTS,
        "max_task_retries": 0,  # servd re-queues a lost batch itself, at the head of its queue
        "max_concurrency": spec.concurrency + 1,
    }
    if reserved.memory:
        options["memory"] = reserved.memory
    if reserved.custom:
        options["resources"] = reserved.custom
    return options


def unsatisfiable(spec: EndpointSpec, nodes: list[Mapping[str, float]]) -> str | None:
    """A warning if no node's total resources could ever hold one replica of `spec`."""
    reserved = Reservation.of(spec)
    need = {"CPU": reserved.num_cpus, "GPU": reserved.num_gpus, "memory": reserved.memory or 0, **reserved.custom}
    need = {k: v for k, v in need.items() if v}
    if any(all(node.get(k, 0.0) >= v for k, v in need.items()) for node in nodes):
        return None
    shown = ", ".join(f"{k}={v:g}" for k, v in sorted(need.items()))
    return (
        f"endpoints.{spec.name}.resources: no node of the cluster has {shown}; "
        "its replicas stay pending (requests wait until queue.timeout_s)"
    )
