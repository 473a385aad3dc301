"""The full check of a config file: the file itself, then its entrypoints and devices.

`servd check`, the daemon's start and every reload use `load_checked`, so a file that passes
`servd check` is one the daemon will accept, and the daemon serves what was checked (the
resolved entrypoints and devices), not a second resolution of it. Like a compiler, the check
reports every problem in one pass: a schema error in one place doesn't hide an entrypoint that
can't be imported elsewhere, or in the same endpoint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from servd.config.schema import Located, Problem, SpecError, parse_yaml
from servd.config.spec import Spec, parse
from servd.runners import devices, entrypoints
from servd.runners.entrypoints import Entrypoint


@dataclass(frozen=True)
class Checked:
    """A spec whose entrypoints imported and whose devices exist, with what they resolved to."""

    spec: Spec
    entrypoints: Mapping[str, Entrypoint]  # endpoint name -> its resolved entrypoint
    devices: Mapping[str, tuple[str, ...]]  # endpoint name -> concrete devices, one model each


def load_checked(path: str | os.PathLike[str], *, fresh_imports: bool = False) -> Checked:
    """parse() plus: each entrypoint imports and is callable, each device exists. Raises SpecError
    listing every problem found, the file's and the code's together."""
    try:
        spec = parse(path)
    except SpecError as exc:
        raise SpecError(_sorted(exc.problems + _code_problems_despite(path, exc.problems, fresh_imports))) from None
    resolved: dict[str, Entrypoint] = {}
    placed: dict[str, tuple[str, ...]] = {}
    problems = _cluster_problems(spec)
    for name, ep in spec.endpoints.items():
        try:
            resolved[name] = entrypoints.resolve(ep.entrypoint, spec.path.parent, fresh=fresh_imports)
        except entrypoints.EntrypointError as exc:
            problems.append(spec.problem(f"endpoints.{name}.entrypoint", str(exc)))
            continue
        try:
            resolved[name].check_options(ep.options)
        except entrypoints.OptionsError as exc:
            problems.append(spec.problem(_options_key(spec.locations, name, exc.option), str(exc)))
        if ep.tensors is not None and resolved[name].streams:
            message = f"{ep.entrypoint} is a generator; an endpoint with tensors: must return its outputs, not yield"
            problems.append(spec.problem(f"endpoints.{name}.tensors", message))
        try:
            placed[name] = tuple(devices.resolve(ep.devices))
        except devices.DeviceError as exc:
            problems.append(spec.problem(f"endpoints.{name}.device", str(exc)))
    if problems:
        raise SpecError(problems)
    return Checked(spec, MappingProxyType(resolved), MappingProxyType(placed))


def _options_key(located: Mapping[str, object], name: str, option: str | None) -> str:
    """Where an options problem points: the bad key itself, else `options` (absent: the entrypoint)."""
    keys = [f"endpoints.{name}.options.{option}"] if option is not None else []
    keys += [f"endpoints.{name}.options", f"endpoints.{name}.entrypoint"]
    return next((key for key in keys if key in located), keys[-1])


def _cluster_problems(spec: Spec) -> list[Problem]:
    """cluster.engine: ray needs Ray installed (an optional extra); the message names it."""
    if not spec.cluster.on_ray:
        return []
    from servd.runners.ray_placement import RayMissing, require_ray

    try:
        require_ray(spec.cluster)
    except RayMissing as exc:
        return [spec.problem("cluster.engine", str(exc))]
    return []


def cluster_warnings(spec: Spec) -> list[str]:
    """What `servd check` can say of a cluster without joining one: on a private Ray instance (no
    `cluster.address`) the only node is this machine, so replicas asking for more than it has would
    never start. A remote cluster's nodes are compared when the daemon starts the replicas (logged
    as `resources unsatisfiable`): a check must not need the cluster up."""
    if not spec.cluster.on_ray or spec.cluster.address is not None:
        return []
    from servd.runners.ray_placement import unsatisfiable

    machine = {"CPU": float(os.cpu_count() or 1), "GPU": float(_gpu_count()), "memory": float(_memory_bytes())}
    warnings = []
    for name, endpoint in spec.endpoints.items():
        warning = unsatisfiable(endpoint, [machine])
        if warning is not None:
            where = spec.where(f"endpoints.{name}.resources")
            where_text = f"{where.file}:{where.line}:{where.col}"
            warnings.append(f"{where_text}: warning: {warning} (a private Ray instance: its node is this machine)")
    return warnings


def _gpu_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return devices.cuda_count(torch)


def _memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _code_problems_despite(path: str | os.PathLike[str], found: list[Problem], fresh: bool) -> list[Problem]:
    """The entrypoint and device problems of a file that failed its schema, for every endpoint
    whose `entrypoint` (and `device`) keys themselves are well-formed."""
    try:
        located = parse_yaml(Path(path).read_text("utf-8"), str(path))
    except (OSError, UnicodeDecodeError, SpecError):
        return []  # unreadable or not YAML: the problems already found say so
    endpoints_ = located.data.get("endpoints") if isinstance(located.data, dict) else None
    if not isinstance(endpoints_, dict):
        return []
    flagged = {p.path for p in found}
    problems = []
    for name, ep in endpoints_.items():
        if isinstance(ep, dict):
            problems += _endpoint_code_problems(located, flagged, str(name), ep, Path(path).parent, fresh)
    return problems


def _endpoint_code_problems(
    located: Located, flagged: set[str], name: str, ep: dict[str, Any], search_dir: Path, fresh: bool
) -> list[Problem]:
    key = f"endpoints.{name}.entrypoint"
    ref = ep.get("entrypoint")
    if not isinstance(ref, str) or key in flagged:
        return []
    try:
        entry = entrypoints.resolve(ref, search_dir, fresh=fresh)
    except entrypoints.EntrypointError as exc:
        return [located.problem(("endpoints", name, "entrypoint"), str(exc))]
    problems = []
    options = ep.get("options", {})
    if isinstance(options, dict) and not any(p.startswith(f"endpoints.{name}.options") for p in flagged):
        try:
            entry.check_options(options)
        except entrypoints.OptionsError as exc:
            marks = dict.fromkeys(".".join(map(str, path)) for path in located.marks)
            problems.append(located.problem(tuple(_options_key(marks, name, exc.option).split(".")), str(exc)))
    return problems + _device_problems(located, flagged, name, ep)


def _device_problems(located: Located, flagged: set[str], name: str, ep: dict[str, Any]) -> list[Problem]:
    device = ep.get("device", "auto")
    names = device if isinstance(device, list) else [device]
    device_key = f"endpoints.{name}.device"
    if any(p == device_key or p.startswith(device_key + ".") for p in flagged) or not all(
        isinstance(n, str) for n in names
    ):
        return []
    try:
        devices.resolve(names)
    except devices.DeviceError as exc:
        return [located.problem(("endpoints", name, "device"), str(exc))]
    return []


def _sorted(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.file, p.line, p.col))
