"""A regular (non-editable) install carries the JSON Schema: `servd schema` works away from the source tree.

The package's files are copied to a scratch directory and built from there, so the build leaves
nothing in the checkout; the install goes to a --target directory, used through PYTHONPATH from
a working directory where the source tree is not importable.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGING = ["pyproject.toml", "setup.cfg", "README.md", "LICENSE", "servd", "schemas"]
SCHEMA = json.loads((REPO / "schemas" / "servd.schema.json").read_text("utf-8"))


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


def test_load_schema_works_from_the_installed_package(installed, tmp_path):
    """servd.schema.load_schema() reads the installed copy, away from the source tree."""
    code = "import json, servd.schema\nprint(servd.schema.__file__)\nprint(json.dumps(servd.schema.load_schema()))\n"
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
