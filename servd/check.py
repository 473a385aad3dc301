"""The full check of a config file: the file itself, then its entrypoints and devices.

`servd check`, the daemon's start and every reload use `load_checked`, so a file that passes
`servd check` is one the daemon will accept.
"""

from __future__ import annotations

import os

from servd import devices, entrypoints
from servd.spec import Problem, Spec, SpecError, parse


def load_checked(path: str | os.PathLike[str], *, fresh_imports: bool = False) -> Spec:
    """parse() plus: each entrypoint imports and is callable, each device exists."""
    spec = parse(path)
    problems = []
    for name, ep in spec.endpoints.items():
        try:
            entrypoints.resolve(ep.entrypoint, spec.path.parent, fresh=fresh_imports)
        except entrypoints.EntrypointError as exc:
            problems.append(_problem(spec, f"endpoints.{name}.entrypoint", str(exc)))
            continue
        try:
            devices.resolve(ep.devices)
        except devices.DeviceError as exc:
            problems.append(_problem(spec, f"endpoints.{name}.device", str(exc)))
    if problems:
        raise SpecError(problems)
    return spec


def _problem(spec: Spec, dotted: str, message: str) -> Problem:
    file, line, col = spec.where(dotted).rsplit(":", 2)
    return Problem(file, int(line), int(col), dotted, message)
