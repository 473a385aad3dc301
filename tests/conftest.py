"""Shared fixtures; the daemon harness itself lives in tests/harness.py."""

from __future__ import annotations

import gc
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from examples import versioned

# Ray reads these when it is imported (tests/test_ray_*.py): no usage statistics; no token auth,
# whose default for a new local cluster writes a token under $HOME that changes how every later
# cluster starts; and loopback addresses kept as 127.0.0.1 (else Ray swaps in the host's routable one).
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
for _key, _value in RAY_ENV.items():
    os.environ[_key] = _value


LEFT_OPEN: list[str] = []  # ResourceWarnings of each test module, finalized at its end


@pytest.fixture(autouse=True, scope="module")
def _finalize_what_the_module_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """Collect garbage at the end of every test module and list what it left open (a socket, a
    file) after the run. Left to the next automatic full collection, an unclosed socket's
    ResourceWarning fails whichever test happens to run then: test_fuzz's allocations made it the
    victim twice, for a socket no test of its own had opened."""
    yield
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    name = request.module.__name__
    LEFT_OPEN.extend(f"{name}: {w.message}" for w in caught if issubclass(w.category, ResourceWarning))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if LEFT_OPEN:
        terminalreporter.section("left open by a test module (finalized at its end)")
        for line in LEFT_OPEN:
            terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _model_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Trained example weights go to one cache per test session, never the user's home."""
    os.environ.setdefault("SERVD_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def gates() -> Iterator[Callable[[], str]]:
    """Make unique gate names (examples.versioned: calls naming one wait until it opens); every
    gate is opened at the end so no worker stays blocked."""
    made: list[str] = []

    def make() -> str:
        name = f"gate-{uuid.uuid4().hex}"
        made.append(name)
        return name

    yield make
    for name in made:
        versioned.open_gate(name)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """One Ray cluster for every Ray test: a head (no custom resource) and two worker nodes,
    `node_a` and `node_b`, each with one `slot` so replicas asking for a slot land one per node.
    Its state lives in a private temp directory (RAY_TMPDIR too: Ray notes the last cluster there,
    which a bare ray.init() would join), removed at the end; every node is on 127.0.0.1."""
    from ray.cluster_utils import Cluster

    root = tempfile.mkdtemp(prefix="servd-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    os.makedirs(os.path.join(root, "ray"))
    previous = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = root
    head = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "temp_dir": os.path.join(root, "ray")}
    cluster = Cluster(initialize_head=True, head_node_args={**head, "include_dashboard": False})
    try:
        cluster.node_a = add_ray_node(cluster, "node_a")
        cluster.node_b = add_ray_node(cluster, "node_b")
        yield cluster
    finally:
        cluster.shutdown()
        if previous is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = previous
        shutil.rmtree(root, ignore_errors=True)


def add_ray_node(cluster: Any, name: str) -> Any:
    """A worker node with custom resources {name: 1, slot: 1}, on 127.0.0.1."""
    return cluster.add_node(num_cpus=2, resources={name: 1, "slot": 1}, node_ip_address="127.0.0.1")
