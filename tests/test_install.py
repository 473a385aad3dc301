"""A regular (non-editable) install carries the JSON Schema: `servd schema` works away from the source tree;
and the README's client-only install (`pip install --no-deps servd` + tornado) runs the client, `servd bench`
and `servd status` without any of the server's dependencies.

The package's files are copied to a scratch directory and built from there, so the build leaves
nothing in the checkout; the install goes to a --target directory, used through PYTHONPATH from
a working directory where the source tree is not importable. The client-only runs add a
directory holding only tornado, and start Python with -S: no site-packages at all, so a stray
import of yaml, jsonschema, torch, ... fails there as it would on a client machine.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tornado

from tests.harness import serve

REPO = Path(__file__).resolve().parent.parent
PACKAGING = ["pyproject.toml", "setup.cfg", "README.md", "LICENSE", "servd", "schemas"]
SCHEMA = json.loads((REPO / "schemas" / "servd.schema.json").read_text("utf-8"))
# Every install_requires of setup.cfg but tornado, by import name.
SERVER_ONLY = ["yaml", "jsonschema", "structlog", "watchdog", "prometheus_client", "orjson", "torch", "ruamel", "numpy"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip install --no-deps --target` of a copy of the package's sources; returns the target."""
    root = tmp_path_factory.mktemp("install")
    source, target = root / "source", root / "target"
    source.mkdir()
    for name in PACKAGING:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.exists():
            shutil.copy2(path, source / name)
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-cache-dir", "--disable-pip-version-check"]
    if importlib.util.find_spec("setuptools") is not None:
        # Build with the environment's setuptools: no download needed, so none allowed.
        command += ["--no-build-isolation", "--no-index"]
    result = subprocess.run(
        [*command, "--target", str(target), str(source)], capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return target


def run_installed(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ, PYTHONPATH=str(target))
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_schema_is_installed_as_package_data(installed):
    """The wheel puts servd.schema.json inside the package, beside the code that reads it."""
    installed_schema = installed / "servd" / "_schemas" / "servd.schema.json"
    assert json.loads(installed_schema.read_text("utf-8")) == SCHEMA
    assert not (installed / "schemas").exists()  # no source-tree fallback to lean on


def test_the_web_console_is_installed_as_package_data(installed):
    """servd/console/* ships with the package: the console works from a regular install, offline."""
    shipped = {p.name for p in (REPO / "servd" / "web" / "console").iterdir() if p.is_file()}
    assert {p.name for p in (installed / "servd" / "web" / "console").iterdir()} >= shipped >= {"index.html", "app.js"}


def test_load_schema_works_from_the_installed_package(installed, tmp_path):
    """servd.config.schema.load_schema() reads the installed copy, away from the source tree."""
    code = "import json\nfrom servd.config import schema as s\nprint(s.__file__)\nprint(json.dumps(s.load_schema()))\n"
    result = run_installed(installed, tmp_path, "-c", code)
    assert result.returncode == 0, result.stderr
    module_file, schema_text = result.stdout.splitlines()
    assert Path(module_file).is_relative_to(installed)  # the install, not the checkout
    assert json.loads(schema_text) == SCHEMA


def test_python_m_servd_schema_prints_the_schema_when_installed(installed, tmp_path):
    """`python -m servd schema` from the install prints the schema as JSON."""
    result = run_installed(installed, tmp_path, "-m", "servd", "schema")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == SCHEMA


def test_the_installed_servd_command_prints_the_schema(installed, tmp_path):
    """The `servd` console script of the install works too."""
    result = run_installed(installed, tmp_path, str(installed / "bin" / "servd"), "schema")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == SCHEMA


def test_every_module_of_the_source_tree_is_installed(installed):
    """No subpackage is left out of the wheel (setup.cfg lists packages by name)."""

    def modules(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*.py") if "__pycache__" not in p.parts}

    assert modules(REPO / "servd") <= modules(installed / "servd")


# -- the client-only install -------------------------------------------------------------------


@pytest.fixture(scope="module")
def client_only(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a client machine: the --no-deps install and tornado, nothing else."""
    deps = tmp_path_factory.mktemp("client-deps")
    shutil.copytree(Path(tornado.__file__).parent, deps / "tornado", ignore=shutil.ignore_patterns("__pycache__"))
    return dict(os.environ, PYTHONPATH=os.pathsep.join((str(installed), str(deps))))


def client_argv(*args: str) -> list[str]:
    return [sys.executable, "-S", *args]  # -S: the test environment's site-packages are out of reach


def run_client(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(client_argv(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_the_client_only_environment_lacks_every_server_dependency(client_only, tmp_path):
    """The premise of the tests below: none of the server's dependencies is importable there."""
    code = f"import importlib.util; print([m for m in {SERVER_ONLY!r} if importlib.util.find_spec(m)])"
    result = run_client(client_only, tmp_path, "-c", code)
    assert (result.returncode, result.stdout.strip()) == (0, "[]"), result.stderr


def test_servd_client_imports_in_a_client_only_install(installed, client_only, tmp_path):
    """The client, the bench and the status command import from the install with tornado alone."""
    code = "import servd.client, servd.tools.bench, servd.tools.status; print(servd.client.__file__)"
    result = run_client(client_only, tmp_path, "-c", code)
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(installed)


def test_servd_bench_help_in_a_client_only_install(installed, client_only, tmp_path):
    """The installed `servd` command's bench (not only `python -m servd.tools.bench`) starts without the server.

    A client-only install (no server dependencies) can run it.
    """
    result = run_client(client_only, tmp_path, str(installed / "bin" / "servd"), "bench", "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: servd bench") and "Exit status" in result.stdout


def test_servd_run_in_a_client_only_install_says_what_is_missing(installed, client_only, tmp_path):
    """`servd run` there exits 1 with a sentence naming the missing dependency, not a traceback."""
    (tmp_path / "servd.yaml").write_text("version: 1\nendpoints:\n  echo: {entrypoint: examples.echo:echo}\n")
    result = run_client(client_only, tmp_path, str(installed / "bin" / "servd"), "run", "servd.yaml")
    assert result.returncode == 1
    assert "needs the server's dependencies" in result.stderr and "client-only install" in result.stderr
    assert "Traceback" not in result.stderr


async def run_client_only(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, str, str]:
    """A client-only process, in a subprocess so the in-process daemon keeps serving."""
    proc = await asyncio.create_subprocess_exec(
        *client_argv(*args), cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_servd_bench_and_status_run_against_a_daemon_from_a_client_only_install(installed, client_only, tmp_path):
    """`servd bench` (websocket and HTTP) and `servd status` of the client-only install, against a real daemon."""
    servd = str(installed / "bin" / "servd")
    config = "version: 1\nendpoints:\n  echo: {entrypoint: examples.echo:echo}\n"
    async with serve(tmp_path, config) as d:
        benches = [
            await run_client_only(client_only, tmp_path, servd, "bench", url, "--endpoint", "echo", *transport,
                                  "--data", "1", "--requests", "5", "--warmup", "0", "--json")
            for url, transport in ((d.ws_url, ()), (d.url, ("--transport", "http")))
        ]  # fmt: skip
        status = await run_client_only(client_only, tmp_path, servd, "status", d.url)
    for rc, out, err in benches:
        assert rc == 0, err
        assert json.loads(out)["levels"][0]["completed"] == 5
    assert status[0] == 0, status[2]
    assert re.search(r"^echo +0 +0 ", status[1], re.M), status[1]
