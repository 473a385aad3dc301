"""reload.plan(old, new) -> Plan: what a new config changes, endpoint by endpoint. Pure.

The daemon applies a Plan; nothing here touches running state, so every kind of change can be
tested as a plain function of two frozen Specs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Set
from dataclasses import dataclass

from servd.config.spec import ClusterSpec, EndpointSpec, ServerSpec, Spec

RESTART_KEYS = ("host", "port")


@dataclass(frozen=True)
class Plan:
    added: tuple[EndpointSpec, ...] = ()
    removed: tuple[str, ...] = ()
    retuned: tuple[EndpointSpec, ...] = ()  # limits only: applied in place
    remodeled: tuple[EndpointSpec, ...] = ()  # entrypoint/options/device or its code: new model beside the old
    server_changed: tuple[str, ...] = ()  # server keys applied live
    needs_restart: tuple[str, ...] = ()  # server keys that only a restart applies
    cluster_changed: tuple[str, ...] = ()  # cluster keys: all of them need a restart (the driver's connection)

    @property
    def empty(self) -> bool:
        return not any(getattr(self, f.name) for f in dataclasses.fields(self))

    def summary(self) -> dict[str, list[str]]:
        """Names of what changes, for the reload log event and /v1/status; server keys as written in
        the file (`server.port`), the same words as /v1/status's `restart_needed`."""
        return {
            "added": [e.name for e in self.added],
            "removed": list(self.removed),
            "retuned": [e.name for e in self.retuned],
            "remodeled": [e.name for e in self.remodeled],
            "server": [f"server.{key}" for key in self.server_changed],
            "needs_restart": self.restart_keys(),
        }

    def restart_keys(self) -> list[str]:
        """What only a restart applies, as written in the file (`server.port`, `cluster.engine`)."""
        return [f"server.{key}" for key in self.needs_restart] + [f"cluster.{key}" for key in self.cluster_changed]


def plan(old: Spec, new: Spec, stale_entrypoints: Set[str] = frozenset()) -> Plan:
    """Diff two specs. `stale_entrypoints`: entrypoints whose module changed on disk (redeploy)."""
    added, retuned, remodeled = [], [], []
    for name, spec in new.endpoints.items():
        before = old.endpoints.get(name)
        if before is None:
            added.append(spec)
        elif before.model_key != spec.model_key or spec.entrypoint in stale_entrypoints:
            remodeled.append(spec)
        elif new.cluster.on_ray and before.replica_shape != spec.replica_shape:
            remodeled.append(spec)  # replicas started or drained (RayRunner.replicas_for keeps equal ones)
        elif before != spec:
            retuned.append(spec)
    removed = tuple(name for name in old.endpoints if name not in new.endpoints)
    changed = _changed_server_keys(old.server, new.server)
    return Plan(
        added=tuple(added),
        removed=removed,
        retuned=tuple(retuned),
        remodeled=tuple(remodeled),
        server_changed=tuple(k for k in changed if k not in RESTART_KEYS),
        needs_restart=tuple(k for k in changed if k in RESTART_KEYS),
        cluster_changed=tuple(
            f.name
            for f in dataclasses.fields(ClusterSpec)
            if getattr(old.cluster, f.name) != getattr(new.cluster, f.name)
        ),
    )


def _changed_server_keys(old: ServerSpec, new: ServerSpec) -> list[str]:
    return [f.name for f in dataclasses.fields(ServerSpec) if getattr(old, f.name) != getattr(new, f.name)]
