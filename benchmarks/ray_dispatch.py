"""servd with `cluster.engine: ray` against `engine: local`, in one run (#17).

(1) Dispatch overhead: the echo endpoint (unbatched) and the batched MLP (examples.mlp:MLP,
batch.max_size 32) served by `servd run` twice, engine local and engine ray (one replica, a
private Ray instance started by servd), at 1 and 64 closed-loop clients. At 1 client every
request is its own batch, so the p50 difference is the added latency per batch: one actor call
and the result's trip back (target: at most 1.5 ms). At 64 clients the p50 difference and the
throughput ratio are shown as measured.

(2) Escape from the GIL: examples.cluster:spin (pure Python, about 20 ms a call, holding the GIL)
at 8 clients: engine ray with 2 replicas against 1 (target: at least 1.7x on 2 cores), and engine
local with concurrency 2 against 1 (threads share one GIL: near 1x).

Servers are not pinned here (replicas are processes of their own); the load generator is this
process. Ray runs with usage stats off, token auth off and its state in a private temp dir, all
removed at the end. On a shared machine, note the load average printed with the results.

    python -m benchmarks.ray_dispatch [--quick] [--duration 4] [--warmup 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import common, mlp

TARGET_ADDED_MS = 1.5
TARGET_GIL_SPEEDUP = 1.7
GIL_CLIENTS = 8


def cluster_yaml(engine: str) -> str:
    return "cluster: {engine: ray}\n" if engine == "ray" else ""


def endpoint_yaml(kind: str, engine: str, replicas: int = 1, concurrency: int = 1) -> str:
    entry = {"echo": "examples.echo:echo", "mlp": "examples.mlp:MLP", "spin": "examples.cluster:spin"}[kind]
    text = f"  {kind}:\n    entrypoint: {entry}\n    device: cpu\n    concurrency: {concurrency}\n"
    if kind == "mlp":
        text += f"    batch: {{max_size: {mlp.BATCH}, max_delay_ms: {mlp.MAX_DELAY_MS}}}\n"
    if engine == "ray":
        text += f"    replicas: {replicas}\n    resources: {{num_cpus: 1}}\n"
    return text


def start(name: str, config_text: str, workdir: Path, env: dict[str, str]) -> common.Server:
    """`servd run` unpinned, in its own process group (a private Ray instance is its child)."""
    (workdir / name).mkdir(parents=True)
    config = workdir / name / "servd.yaml"
    config.write_text(config_text)
    port = common.free_port()
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "servd", "run", str(config), "--port", str(port)],
            cwd=common.ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
        )  # fmt: skip
    server = common.Server(name, port, process, log)
    try:
        common._wait_ready(server, "/readyz", 120)
    except BaseException:
        server.stop()
        raise
    return server


def measure(
    name: str, config: str, workload: common.Workload, clients: list[int], settings: dict[str, Any], env: dict[str, str]
) -> dict[int, common.Measurement]:
    with tempfile.TemporaryDirectory(prefix="servd-bench-") as tmp, common.servers() as started:
        server = start(name, config, Path(tmp), env)
        started.append(server)
        out = {}
        for count in clients:
            m = asyncio.run(common.closed_loop(server, workload, count, settings["warmup"], settings["duration"]))
            print(f"{name:<22} {common.progress_line(m)}", flush=True)
            out[count] = m
        return out


def ray_env(root: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(common.ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", RAY_TMPDIR=root)
    return env


def run(quick: bool, duration: float, warmup: float) -> dict[str, Any]:
    settings = {"duration": 1.0 if quick else duration, "warmup": 0.5 if quick else warmup}
    info = common.machine_info()
    common.print_machine(info)
    root = tempfile.mkdtemp(prefix="servd-ray-", dir="/tmp")
    env = ray_env(root)
    results: dict[str, Any] = {"machine": info, "settings": settings, "dispatch": {}, "gil": {}}
    summary = []
    try:
        workloads = {
            "echo": common.servd_workload("echo", {"x": 1}),
            "mlp": common.servd_workload("mlp", json.loads(mlp.inputs(1)[0])),
        }
        for kind, workload in workloads.items():
            points = {}
            for engine in ("local", "ray"):
                config = common.servd_config(endpoint_yaml(kind, engine)) + cluster_yaml(engine)
                points[engine] = measure(f"{kind}-{engine}", config, workload, [1, 64], settings, env)
            for clients in (1, 64):
                local, remote = points["local"][clients], points["ray"][clients]
                added = None if remote.p50_ms is None or local.p50_ms is None else remote.p50_ms - local.p50_ms
                results["dispatch"][f"{kind}@{clients}"] = {
                    "local": local.as_dict(), "ray": remote.as_dict(), "added_p50_ms": added,
                    "throughput_ratio": common.ratio(remote.rate, local.rate),
                }  # fmt: skip
                target = TARGET_ADDED_MS if clients == 1 else None
                what = f"{kind} @{clients}: p50 added by engine ray (ms{', per batch' if clients == 1 else ''})"
                summary.append(common.summary_row(what, added, target, higher=False))
        spin = common.servd_workload("spin", None)
        gil: dict[str, float] = {}
        for name, engine, replicas, concurrency in (
            ("ray-1-replica", "ray", 1, 1), ("ray-2-replicas", "ray", 2, 1),
            ("local-concurrency-1", "local", 1, 1), ("local-concurrency-2", "local", 1, 2),
        ):  # fmt: skip
            config = common.servd_config(endpoint_yaml("spin", engine, replicas, concurrency)) + cluster_yaml(engine)
            m = measure(f"spin-{name}", config, spin, [GIL_CLIENTS], settings, env)[GIL_CLIENTS]
            gil[name] = m.rate
            results["gil"][name] = m.as_dict()
        ray_speedup = common.ratio(gil["ray-2-replicas"], gil["ray-1-replica"])
        local_speedup = common.ratio(gil["local-concurrency-2"], gil["local-concurrency-1"])
        results["gil"]["ray_speedup"], results["gil"]["local_speedup"] = ray_speedup, local_speedup
        summary.append(
            common.summary_row("spin: ray 2 replicas / 1 replica (throughput)", ray_speedup, TARGET_GIL_SPEEDUP)
        )
        summary.append(common.summary_row("spin: local concurrency 2 / 1 (throughput, ~1x)", local_speedup, None))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results["loadavg_after"] = common.loadavg()
    results["summary"] = summary
    print(
        "\n"
        + common.table(["measure", "value", "target"], [[r["what"], r["value"], r["target"] or ""] for r in summary])
    )
    print(f"load average after: {results['loadavg_after']}")
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="short windows: a smoke run, not a measurement")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds measured per point")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each measurement")


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return run(args.quick, args.duration, args.warmup)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ray_dispatch", description=__doc__.splitlines()[0])
    add_arguments(parser)
    print(f"written: {common.write_json('ray_dispatch', run_from_args(parser.parse_args(argv)))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
