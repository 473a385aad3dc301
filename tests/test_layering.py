"""The module graph the README's layout section states, kept true (#11).

Each server module sits in a layer; a module imports only from its own layer or lower ones, the
graph has no cycle, the daemon knows no handler, the pure modules import nothing that runs
(no tornado, no torch), and the client side imports nothing of the server. Imports are read from
the source (type-only and function-level imports count too: they are dependencies all the same).
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from servd.config.plan import RESTART_KEYS
from servd.config.spec import ServerSpec
from servd.daemon.reloader import SERVER_APPLIERS

PACKAGE = Path(__file__).resolve().parent.parent / "servd"

# Lowest first. Same-layer imports are allowed as long as they make no cycle.
LAYERS: list[set[str]] = [
    {  # values, rules and leaf services: nothing here knows of a running endpoint
        "errors", "schema", "spec", "reload", "batching", "protocol", "request", "failures", "stats",
        "yamledit", "tune_model", "tune_search", "tune_report", "tune_plot",
        "compat", "logs", "systemd", "hostcheck", "auth", "gcpolicy", "devices", "entrypoints", "watch",
        "metrics", "queue", "workers", "docs", "validation", "webguard", "admission", "openai_shapes",
        "openapi", "tensors", "v2", "frames", "ray_runner", "ray_replica",
    },
    {"check", "instances"},
    {"endpoint"},
    {"daemon", "reloading", "snapshot", "live"},
    {"handlers", "handlers.base", "handlers.http", "handlers.ops", "handlers.ws", "handlers.openai",
     "handlers.console", "handlers.events", "handlers.v2"},
    {"app", "listener"},
    {"service"},
    {"cli", "__main__", "tune", "tune_session", "tune_target"},  # tune drives a daemon from outside, like cli
]  # fmt: skip
CLIENT_SIDE = {"bench", "bench_report", "status"}  # plus servd.client.*: usable without the server's dependencies
CLIENT_MAY_IMPORT = {"errors"}
PURE = {
    "tune_model",
    "tune_search",
    "errors",
    "schema",
    "spec",
    "reload",
    "batching",
    "protocol",
    "request",
    "failures",
    "stats",
    "queue",
    "admission",
    "webguard",
    "openai_shapes",
    "openapi",
    "tensors",
    "v2",
    "frames",
}
RUNTIME_LIBRARIES = {"tornado", "torch"}


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    return "servd" if name == "__init__" else name.removesuffix(".__init__")


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(servd modules, top-level third-party packages) that the file imports anywhere in it."""
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "servd":
                ours |= {a.name if (PACKAGE / f"{a.name}.py").exists() or (PACKAGE / a.name).is_dir() else "servd"
                         for a in node.names}  # fmt: skip
            elif node.module.startswith("servd."):
                ours.add(node.module.removeprefix("servd."))
            else:
                theirs.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("servd."):
                    ours.add(alias.name.removeprefix("servd."))
                else:
                    theirs.add(alias.name.split(".")[0])
    return ours, theirs


# The package itself is the public facade: it holds __version__ and imports lazily, so it is left out.
GRAPH = {
    name: (ours - {"servd"}, theirs)
    for name, (ours, theirs) in ((_module_name(p), _imports(p)) for p in sorted(PACKAGE.rglob("*.py")))
    if name != "servd"
}
SERVER = {name for name in GRAPH if not name.startswith("client") and name not in CLIENT_SIDE}


def _layer(name: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if name in layer)


def test_every_server_module_has_a_layer():
    """A new module must be placed in the graph (and the README's layout section) on purpose."""
    placed = set().union(*LAYERS)
    assert SERVER - placed == set(), "add these modules to LAYERS and to the README's module graph"
    assert placed - SERVER == set(), "LAYERS names modules that no longer exist"


@pytest.mark.parametrize("name", sorted(SERVER))
def test_no_module_imports_upward(name):
    ours, _ = GRAPH[name]
    upward = {dep for dep in ours - {name} if dep in SERVER and _layer(dep) > _layer(name)}
    assert upward == set(), f"servd.{name} (layer {_layer(name)}) imports from a higher layer: {sorted(upward)}"


def test_the_daemon_imports_no_part_of_the_web_front():
    ours, _ = GRAPH["daemon"]
    assert {d for d in ours if d.startswith("handlers") or d in ("app", "listener", "service")} == set()


def test_the_module_graph_has_no_cycle():
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for dep in sorted(GRAPH[name][0] - {name}):
            if dep not in GRAPH:
                continue
            if state.get(dep) == "open":
                cycle = [*trail[trail.index(dep) :], dep] if dep in trail else [name, dep]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep, [*trail, dep])
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("name", sorted(PURE))
def test_pure_modules_import_nothing_that_runs(name):
    _, theirs = GRAPH[name]
    assert theirs & RUNTIME_LIBRARIES == set()


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if n.startswith("client") or n in CLIENT_SIDE))
def test_the_client_side_imports_nothing_of_the_server(name):
    ours, _ = GRAPH[name]
    server = {d for d in ours if not d.startswith("client") and d not in CLIENT_SIDE | CLIENT_MAY_IMPORT}
    assert server == set(), f"servd.{name} imports server modules {sorted(server)}"


def test_every_server_setting_says_how_a_reload_applies_it():
    """A new server key can't be added without deciding how a reload reaches the running daemon."""
    fields = {f.name for f in dataclasses.fields(ServerSpec)}
    assert set(SERVER_APPLIERS) == fields
    assert all(SERVER_APPLIERS[key] is None for key in RESTART_KEYS), "restart-only keys have no applier"
