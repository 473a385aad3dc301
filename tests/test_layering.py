"""The package layout the docs' Layout page states, kept true (#11, #24).

servd's code is in packages by seam, each one layer. A package imports only from itself and the
packages below it: no import runs upward between packages, the module graph has no cycle, the
daemon knows no part of the web front, the pure packages import nothing that runs (no tornado,
no torch), and the client side imports nothing of the server. Imports are read from the source
(type-only and function-level imports count too: they are dependencies all the same).

A reader who wants to know where something lives reads PACKAGES, lowest first; the docs' Layout
page is tested against it (tests/test_docs_site.py).
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

# Lowest first: each may import only from itself and the ones above it in this list.
PACKAGES: list[tuple[str, str]] = [
    ("errors", "the wire's error codes and the exception that carries one; every layer may raise them"),
    ("client", "the Python client (websocket and HTTP): imports only errors, installs without the server"),
    ("inputs", "what clients send, as values: strict JSON text, declared tensors, input_schema checks"),
    ("config", "servd.yaml as typed values: the schema, the frozen spec, the reload plan, byte-preserving edits"),
    ("obs", "observability: Prometheus metrics and structured logs"),
    ("runners", "the Runner seam and where entrypoints run: the local thread pool, Ray replicas, devices"),
    ("core", "a running endpoint, transport-neutral: requests, queue, admission, batching, typed events"),
    ("protocols", "each wire protocol's shapes as pure functions: websocket messages, frames, v2, OpenAI, OpenAPI"),
    ("daemon", "owns the running spec and endpoints: loading, reload, the file watcher, systemd, auth"),
    ("web", "the Tornado front: the app, its listener, guards, the live feed, one handler module per protocol"),
    ("service", "the composition root: builds the daemon, its web front and the listener, and wires them"),
    ("tools", "commands that drive servd from outside: status, docs, bench, tune"),
    ("cli", "the command line, the only place that exits"),
]
ORDER = [name for name, _ in PACKAGES] + ["__main__"]
PURE = {"errors", "inputs", "config", "protocols"}  # values and rules: nothing here runs a loop or a model
RUNTIME_LIBRARIES = {"tornado", "torch"}
CLIENT_SIDE = {"client", "tools.bench", "tools.status"}  # usable without the server's deps
CLIENT_MAY_IMPORT = {"errors", "client"}
PURE_MODULES_ELSEWHERE = {"core.queue", "core.admission", "core.batching", "core.request", "core.events", "core.stats"}


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    return "servd" if name == "__init__" else name.removesuffix(".__init__")


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(servd modules, top-level third-party packages) that the file imports anywhere in it."""
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "servd":
                ours |= {a.name for a in node.names}
            elif node.module.startswith("servd."):
                base = node.module.removeprefix("servd.")
                for alias in node.names:  # `from servd.core import endpoint` names a module
                    module = f"{base}.{alias.name}"
                    is_module = (PACKAGE / f"{module.replace('.', '/')}.py").exists()
                    is_package = (PACKAGE / module.replace(".", "/")).is_dir()
                    ours.add(module if is_module or is_package else base)
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
    name: (ours - {"servd", "__version__"}, theirs)
    for name, (ours, theirs) in ((_module_name(p), _imports(p)) for p in sorted(PACKAGE.rglob("*.py")))
    if name != "servd"
}


def _package(module: str) -> str:
    return module.split(".")[0]


def _is_client_side(module: str) -> bool:
    return any(module == c or module.startswith(f"{c}.") for c in CLIENT_SIDE)


SERVER = {name for name in GRAPH if not _is_client_side(name)}


def test_every_module_is_in_a_package_of_the_layout():
    """A new top-level module or package must be placed in the layout (and the docs) on purpose."""
    unplaced = {name for name in GRAPH if _package(name) not in ORDER}
    assert unplaced == set(), "add these to PACKAGES and to the docs' Layout page"
    assert {name for name, _ in PACKAGES} <= {_package(n) for n in GRAPH}, "PACKAGES names a package that is gone"


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_no_import_runs_upward_between_packages(name):
    """Each module imports only from its own package and the packages below it."""
    ours, _ = GRAPH[name]
    mine = ORDER.index(_package(name))
    upward = {dep for dep in ours if _package(dep) in ORDER and ORDER.index(_package(dep)) > mine}
    assert upward == set(), f"servd.{name} ({_package(name)}) imports from a higher package: {sorted(upward)}"


def test_the_core_speaks_no_transport():
    """The core emits typed events; no module of it builds or parses a protocol's wire text."""
    for name, (ours, _) in GRAPH.items():
        if _package(name) == "core":
            assert {d for d in ours if _package(d) in ("protocols", "web")} == set(), name


def test_no_runner_is_asked_its_type_outside_the_composition_root():
    """The core and the daemon use the Runner seam (capabilities, liner, describe), never isinstance."""
    for path in PACKAGE.rglob("*.py"):
        if _package(_module_name(path)) in ("runners", "service"):
            continue
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
                named = ast.unparse(node.args[1])
                assert "Runner" not in named and "Replica" not in named, f"{path.name}: isinstance(..., {named})"


def test_the_daemon_imports_no_part_of_the_web_front():
    for name, (ours, _) in GRAPH.items():
        if _package(name) == "daemon":
            assert {d for d in ours if _package(d) in ("web", "service", "cli")} == set(), name


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


@pytest.mark.parametrize(
    "name", sorted(n for n in GRAPH if _package(n) in PURE or n in PURE_MODULES_ELSEWHERE)
)  # fmt: skip
def test_pure_modules_import_nothing_that_runs(name):
    """Values and rules are testable without a loop or a model: no tornado, no torch."""
    _, theirs = GRAPH[name]
    assert theirs & RUNTIME_LIBRARIES == set()


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if _is_client_side(n)))
def test_the_client_side_imports_nothing_of_the_server(name):
    """The client, `servd bench` and `servd status` run from a client-only install."""
    ours, _ = GRAPH[name]
    server = {d for d in ours if not _is_client_side(d) and _package(d) not in CLIENT_MAY_IMPORT}
    assert server == set(), f"servd.{name} imports server modules {sorted(server)}"


def test_every_server_setting_says_how_a_reload_applies_it():
    """A new server key can't be added without deciding how a reload reaches the running daemon."""
    fields = {f.name for f in dataclasses.fields(ServerSpec)}
    assert set(SERVER_APPLIERS) == fields
    assert all(SERVER_APPLIERS[key] is None for key in RESTART_KEYS), "restart-only keys have no applier"
