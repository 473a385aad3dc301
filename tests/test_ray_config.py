"""The `cluster:` block, `replicas` and `resources` (#17) as plain values: parsing, refusals, the
reload plan, the check without Ray, the resource rules; and that a plain install never imports Ray."""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from servd.config.plan import plan
from servd.config.schema import SpecError
from servd.config.spec import ClusterSpec, EndpointSpec, parse
from servd.runners.ray_placement import actor_options, unsatisfiable, wanted_replicas
from servd.runners.ray_replica import RemoteError, _sendable
from servd.runners.seam import BatchResult, Outcome
from tests.procs import REPO, env


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "servd.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


RAY = """
version: 1
cluster: {engine: ray, address: "10.0.0.5:6379", namespace: prod, runtime_env: {env_vars: {A: "1"}}}
endpoints:
  gpu:
    entrypoint: examples.echo:echo
    replicas: per_gpu
    resources: {num_gpus: 1, memory_gb: 2, node_a: 1}
"""


def test_the_cluster_block_and_replica_settings_become_frozen_values(tmp_path):
    spec = parse(write(tmp_path, RAY))
    assert spec.cluster == ClusterSpec("ray", "10.0.0.5:6379", "prod", {"env_vars": {"A": "1"}})
    endpoint = spec.endpoints["gpu"]
    assert endpoint.replicas == "per_gpu"
    assert dict(endpoint.resources) == {"num_cpus": 1, "num_gpus": 1, "memory_gb": 2, "node_a": 1}


def test_no_cluster_block_means_the_local_engine(tmp_path):
    spec = parse(write(tmp_path, "version: 1\nendpoints:\n  e: {entrypoint: examples.echo:echo}\n"))
    assert spec.cluster == ClusterSpec() and not spec.cluster.on_ray


def test_a_ray_client_address_is_refused_with_the_reason(tmp_path):
    with pytest.raises(SpecError) as caught:
        parse(write(tmp_path, RAY.replace("10.0.0.5:6379", "ray://head:10001")))
    (problem,) = caught.value.problems
    assert problem.path == "cluster.address"
    assert "Ray Client (ray://) addresses are refused" in problem.message
    assert "run servd on a node of the cluster" in problem.message.lower()


def test_a_device_list_on_ray_is_refused_in_favour_of_replicas(tmp_path):
    with pytest.raises(SpecError) as caught:
        parse(write(tmp_path, RAY.replace("replicas: per_gpu", "device: [cpu, cpu]")))
    (problem,) = caught.value.problems
    assert problem.path == "endpoints.gpu.device" and "set replicas" in problem.message


def test_replicas_must_be_a_positive_count_or_per_gpu(tmp_path):
    with pytest.raises(SpecError) as caught:
        parse(write(tmp_path, RAY.replace("replicas: per_gpu", "replicas: per_node")))
    assert [p.path for p in caught.value.problems] == ["endpoints.gpu.replicas"]


def test_changing_the_cluster_needs_a_restart_and_says_which_key(tmp_path):
    old = parse(write(tmp_path, RAY))
    new = dataclasses.replace(old, cluster=dataclasses.replace(old.cluster, engine="local", address="auto"))
    change = plan(old, new)
    assert change.summary()["needs_restart"] == ["cluster.engine", "cluster.address"]


def test_changing_replicas_or_resources_starts_or_drains_replicas(tmp_path):
    """A new count or reservation is a new make of the endpoint's replicas (kept where equal)."""
    old = parse(write(tmp_path, RAY))
    endpoint = old.endpoints["gpu"]
    for changed in (
        dataclasses.replace(endpoint, replicas=3),
        dataclasses.replace(endpoint, resources={"num_gpus": 2}),
    ):
        new = dataclasses.replace(old, endpoints={"gpu": changed})
        assert [e.name for e in plan(old, new).remodeled] == ["gpu"]


def test_changing_concurrency_on_ray_starts_replicas_with_that_many_threads(tmp_path):
    """A Ray actor's thread count is fixed when it starts: on a cluster a new `concurrency` means
    new replicas beside the old, then a swap; on one machine it stays a live retune."""
    old = parse(write(tmp_path, RAY))
    new = dataclasses.replace(old, endpoints={"gpu": dataclasses.replace(old.endpoints["gpu"], concurrency=4)})
    change = plan(old, new)
    assert [e.name for e in change.remodeled] == ["gpu"] and not change.retuned
    assert actor_options(new.endpoints["gpu"])["max_concurrency"] == 5
    local_old = dataclasses.replace(old, cluster=ClusterSpec())
    local_new = dataclasses.replace(new, cluster=ClusterSpec())
    change = plan(local_old, local_new)
    assert [e.name for e in change.retuned] == ["gpu"] and not change.remodeled


def test_replicas_and_resources_on_one_machine_reload_no_model(tmp_path):
    """With engine local they are ignored (the schema says so): editing them is a retune, never a
    reload of the model."""
    old = dataclasses.replace(parse(write(tmp_path, RAY)), cluster=ClusterSpec())
    endpoint = old.endpoints["gpu"]
    for changed in (dataclasses.replace(endpoint, replicas=3), dataclasses.replace(endpoint, resources={"x": 1.0})):
        change = plan(old, dataclasses.replace(old, endpoints={"gpu": changed}))
        assert not change.remodeled and [e.name for e in change.retuned] == ["gpu"]


def test_ray_engine_without_ray_installed_names_the_extra(tmp_path):
    """`servd check` on a file with engine: ray, where Ray can't be imported: one problem, at
    cluster.engine, naming pip install 'servd[ray]'."""
    path = write(tmp_path, RAY.replace("    replicas: per_gpu\n", "").replace("10.0.0.5:6379", "auto"))
    script = (
        "import sys; sys.modules['ray'] = None\n"  # an import of ray now fails, as without the package
        "from servd.daemon.loading import load_checked\n"
        "from servd.config.schema import SpecError\n"
        f"try:\n    load_checked({str(path)!r})\nexcept SpecError as exc:\n    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env(), capture_output=True, text=True, timeout=60
    )
    assert "cluster.engine: cluster.engine: ray needs Ray" in out.stdout, out
    assert "pip install 'servd[ray]'" in out.stdout


def test_servd_check_warns_of_resources_a_private_instance_can_never_hold(tmp_path):
    """No `address`: the private Ray instance is this machine, so `servd check` can tell that a
    replica asking for more CPUs than it has, or a custom resource, would never start. A warning
    at the line of `resources`; the file still checks ok (exit 0)."""
    path = write(
        tmp_path,
        """
        version: 1
        cluster: {engine: ray}
        endpoints:
          fits:
            entrypoint: examples.echo:echo
            resources: {num_cpus: 1}
          huge:
            entrypoint: examples.echo:echo
            resources: {num_cpus: 100000, rack_7: 1}
        """,
    )
    out = subprocess.run(
        [sys.executable, "-m", "servd", "check", str(path)],
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out
    warnings = [line for line in out.stderr.splitlines() if ": warning: " in line]
    assert len(warnings) == 1, out.stderr
    assert warnings[0].startswith(f"{path}:9:") and "endpoints.huge.resources" in warnings[0]
    assert "CPU=100000" in warnings[0] and "rack_7=1" in warnings[0]
    assert "ok (2 endpoints" in out.stdout


def test_a_local_daemon_never_imports_ray(tmp_path):
    """A plain config is checked, served and answered without `ray` ever being imported."""
    script = f"""
import asyncio, sys
from pathlib import Path
from tests.harness import serve

async def main():
    config = "version: 1\\nendpoints:\\n  echo: {{entrypoint: examples.echo:echo}}\\n"
    async with serve(Path({str(tmp_path)!r}), config) as d:
        assert (await d.post("echo", 1)).status == 200

asyncio.run(main())
print("ray imported:", "ray" in sys.modules)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env(), capture_output=True, text=True, timeout=120
    )
    assert out.stdout.strip().splitlines()[-1] == "ray imported: False", out


def spec_with(**changes: object) -> EndpointSpec:
    return dataclasses.replace(EndpointSpec("e", "examples.echo:echo"), **changes)  # type: ignore[arg-type]


def test_per_gpu_means_one_replica_per_gpu_of_the_cluster():
    assert wanted_replicas(spec_with(replicas="per_gpu"), 8.0) == 8
    assert wanted_replicas(spec_with(replicas="per_gpu", resources={"num_gpus": 2}), 8.0) == 4
    assert wanted_replicas(spec_with(replicas=3), 8.0) == 3


def test_an_error_that_cannot_be_pickled_crosses_from_the_replica_by_name_and_text():
    """What a replica sends back must pickle: an entrypoint's unpicklable exception goes as a
    RemoteError named like it, so the client still reads `raised ValueError: ...`."""

    class Unpicklable(ValueError):
        def __init__(self, text: str) -> None:
            super().__init__(text)
            self.lock = threading.Lock()

    result = _sendable(BatchResult([Outcome(error=Unpicklable("bad pixel 7"))], 0.0))
    error = pickle.loads(pickle.dumps(result)).outcomes[0].error
    assert isinstance(error, RemoteError)
    assert (type(error).__name__, str(error)) == ("Unpicklable", "bad pixel 7")


def test_resources_become_ray_actor_options():
    options = actor_options(spec_with(resources={"num_cpus": 2, "num_gpus": 1, "memory_gb": 1.5, "node_a": 1}))
    assert options["num_cpus"] == 2 and options["num_gpus"] == 1
    assert options["memory"] == int(1.5 * 1024**3)
    assert options["resources"] == {"node_a": 1}
    assert options["max_task_retries"] == 0  # servd re-queues lost batches itself
    assert options["max_concurrency"] == 2  # concurrency, and one more for ready/close


def test_resources_no_node_has_are_warned_of():
    nodes = [{"CPU": 8.0, "GPU": 1.0, "memory": 32 * 1024**3}, {"CPU": 2.0}]
    assert unsatisfiable(spec_with(resources={"num_cpus": 4, "num_gpus": 1}), nodes) is None
    warning = unsatisfiable(spec_with(resources={"num_cpus": 4, "num_gpus": 2}), nodes)
    assert warning is not None and "endpoints.e.resources" in warning and "GPU=2" in warning
    assert unsatisfiable(spec_with(resources={"node_b": 1}), nodes) is not None


def test_servd_status_names_each_endpoints_replicas():
    """`servd status` adds a line of live/wanted replicas, with pending and dead ones, on a cluster."""
    from servd.tools.status import render
    from tests.test_status_cmd import STATUS, endpoint

    on_ray = endpoint() | {"replicas": {"wanted": 3, "live": 1, "pending": 1, "dead": 1, "each": []}}
    lines = render("http://h:1", STATUS, [on_ray], now=0).splitlines()
    assert "replicas on the cluster: classify 1/3 live, 1 pending, 1 dead" in lines
    assert not any("replicas" in line for line in render("http://h:1", STATUS, [endpoint()], now=0).splitlines())


async def test_a_reload_that_changes_the_cluster_block_asks_for_a_restart(tmp_path):
    """Editing `cluster:` applies nothing of it live: the reload is applied, /v1/status lists the
    key under restart_needed, and the running daemon keeps the cluster it started with."""
    from tests.harness import eventually, serve, write_config

    local = "version: 1\nendpoints:\n  echo: {entrypoint: examples.echo:echo}\n"
    async with serve(tmp_path, local) as d:
        write_config(tmp_path, "version: 1\ncluster: {namespace: other}\n" + local.split("\n", 1)[1])
        d.daemon.request_reload()
        await eventually(lambda: d.daemon.generation == 2, "the reload to apply")
        status = (await d.http("GET", "/v1/status")).json()
        assert status["restart_needed"] == ["cluster.namespace"]
        assert status["cluster"] == {"engine": "local", "address": None, "namespace": "servd"}
        assert (await d.post("echo", 1)).status == 200
