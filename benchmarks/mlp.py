"""servd on a torch model against the same model called in-process, on one core each.

examples.mlp:MLP (256-1024-1024-16) is served by `servd run` with concurrency 1 and
server.torch_threads 1, pinned to one core, twice: batched (batch.max_size 32, a short
max_delay_ms) and unbatched (no batch block: what Gradio's defaults give). N closed-loop clients
each keep one request in flight. The in-process limit is the same model called directly with
JSON-decoded lists (list-to-tensor conversion included) at batch 32 for the batched server and
at batch 1 for the unbatched one, in a fresh process pinned to the same core with
torch.set_num_threads(1).

With --rounds R the servd points are measured R times, each round between two in-process runs
whose mean is that round's limit (load on a shared machine drifts); each point reports the
round with the median share.

    python -m benchmarks.mlp [--quick] [--clients 1,64,256] [--duration 5] [--rounds 1] [--device cpu]
                             [--modes batched,unbatched] [--batch-wait when_busy]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks import common

BATCH = 32
MAX_DELAY_MS = 2
INPUTS = 256  # distinct inputs cycled through in-process
TARGET_SHARE_AT_64 = 0.35
TARGET_P99_MS_AT_64 = 50.0
TARGET_UNBATCHED_SHARE_AT_64 = 0.58  # of the in-process batch-1 call (issue #13)
TARGET_UNBATCHED_P50_AT_1 = 1.3  # p50 at 1 client over the in-process batch-1 call's p50
UNBATCHED = "unbatched"


def inputs(count: int, seed: int = 0) -> list[str]:
    """`count` JSON texts of 256 numbers each (4 decimals, as a client would send them)."""
    rng = random.Random(seed)
    return [json.dumps([round(rng.uniform(-1, 1), 4) for _ in range(256)]) for _ in range(count)]


def endpoint_yaml(device: str = "cpu", wait: str | None = "when_busy") -> str:
    """The served endpoint; `wait` None: unbatched (no batch block)."""
    text = f"  mlp:\n    entrypoint: examples.mlp:MLP\n    device: {device}\n    concurrency: 1\n"
    if wait is not None:
        text += f"    batch: {{max_size: {BATCH}, max_delay_ms: {MAX_DELAY_MS}, wait: {wait}}}\n"
    return text


# -- in-process (runs in its own pinned process: python -m benchmarks.mlp --in-process) --------


def in_process(warmup_s: float, duration_s: float, device: str = "cpu") -> dict[str, Any]:
    import torch

    from examples.mlp import MLP

    torch.set_num_threads(1)
    model = MLP(device)
    texts = inputs(INPUTS)
    results: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
    for batch in (1, BATCH):
        for with_json in (False, True):
            decoded = [json.loads(t) for t in texts]
            latencies: list[float] = []
            i = 0
            started = time.perf_counter()
            window_start = started + warmup_s
            end = window_start + duration_s
            count = 0
            while True:
                now = time.perf_counter()
                if now >= end:
                    break
                chunk = range(i, i + batch)
                i = (i + batch) % (INPUTS - BATCH)
                t0 = time.perf_counter()
                if with_json:  # what servd's worker adds: decoding inputs, encoding each output
                    outputs = model([json.loads(texts[j]) for j in chunk])
                    [json.dumps(o, separators=(",", ":")) for o in outputs]
                else:
                    model([decoded[j] for j in chunk])
                t1 = time.perf_counter()
                if t0 >= window_start:
                    latencies.append(t1 - t0)
                    count += batch
            elapsed = sum(latencies)
            key = f"batch{batch}" + ("_json" if with_json else "")
            p50, p99 = common.percentile(latencies, 0.5), common.percentile(latencies, 0.99)
            results[key] = {
                "batch": batch,
                "calls": len(latencies),
                "samples_per_s": count / elapsed if elapsed else None,
                "call_p50_ms": None if p50 is None else p50 * 1000,
                "call_p99_ms": None if p99 is None else p99 * 1000,
            }
    return results


def run_in_process(warmup_s: float, duration_s: float, device: str) -> dict[str, Any]:
    argv = [*common.pin_prefix(common.SERVER_CORE), sys.executable, "-m", "benchmarks.mlp", "--in-process"]
    argv += ["--warmup", str(warmup_s), "--duration", str(duration_s), "--device", device]
    budget = 60 + 4 * (warmup_s + duration_s) * 2
    done = subprocess.run(argv, cwd=common.ROOT, capture_output=True, timeout=budget, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"in-process run failed ({done.returncode}):\n{done.stderr.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


# -- servd -----------------------------------------------------------------------------------


def batch_counters(server: common.Server) -> tuple[float, float]:
    """(sum, count) of servd_batch_size for the mlp endpoint, from /metrics."""
    with urllib.request.urlopen(f"http://{common.HOST}:{server.port}/metrics", timeout=10) as reply:
        text = reply.read().decode()

    def value(name: str) -> float:
        match = re.search(rf'^servd_batch_size_{name}\{{endpoint="mlp"\}} (\S+)$', text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    return value("sum"), value("count")


def run(
    *,
    clients: tuple[int, ...] = (1, 64, 256),
    warmup_s: float = 1.0,
    duration_s: float = 5.0,
    compare: tuple[tuple[str, Path], ...] = (),
    device: str = "cpu",
    rounds: int = 1,
    batch_waits: tuple[str, ...] = ("when_busy",),
    modes: tuple[str, ...] = ("batched", UNBATCHED),
) -> dict[str, Any]:
    info = common.machine_info()
    common.pin_self(common.CLIENT_CORE)
    common.print_machine(info)
    print("  in-process (pinned to the server's core, torch threads 1) ...", flush=True)
    in_runs = [run_in_process(warmup_s, duration_s, device)]
    _print_in_process(in_runs[0])
    workload = common.servd_workload("mlp", json.loads(inputs(1)[0]))
    every: dict[str, dict[int, list[dict[str, Any]]]] = {}
    limit_keys: dict[str, str] = {}  # server name -> the in-process run it is a share of
    with common.workdir() as work, common.servers() as running:
        served: list[tuple[str | None, str]] = []  # (batch.wait or None, name suffix)
        if "batched" in modes:  # more than one wait: side by side, each point measured on each in turn
            served += [(wait, "" if len(batch_waits) == 1 else f" wait={wait}") for wait in batch_waits]
        if UNBATCHED in modes:
            served.append((None, f" {UNBATCHED}"))
        for wait, suffix in served:
            config = common.servd_config(endpoint_yaml(device, wait), log_level="warning", torch_threads=1)
            for label, root in [("servd", common.ROOT), *compare]:
                running.append(common.start_servd(label + suffix, config, work, root=root))
                limit_keys[running[-1].name] = LIMIT_KEY if wait is not None else "batch1"
        for round_ in range(rounds):
            rows: list[dict[str, Any]] = []
            for n in clients:
                for server in running:
                    sum0, count0 = batch_counters(server)
                    m = asyncio.run(common.closed_loop(server, workload, n, warmup_s, duration_s))
                    sum1, count1 = batch_counters(server)
                    row = m.as_dict()
                    row["mean_batch"] = (sum1 - sum0) / (count1 - count0) if count1 > count0 else None
                    rows.append(row)
                    every.setdefault(server.name, {}).setdefault(n, []).append(row)
                    line = common.progress_line(m)
                    print(f"  round {round_ + 1} {server.name} {line}  mean batch {common.fmt(row['mean_batch'])}")
            print("  in-process again ...", flush=True)
            in_runs.append(run_in_process(warmup_s, duration_s, device))
            _print_in_process(in_runs[-1])
            for row, server in zip(rows, [s for _ in clients for s in running], strict=True):
                key = limit_keys[server.name]
                limit = (in_runs[-2][key]["samples_per_s"] + in_runs[-1][key]["samples_per_s"]) / 2
                row["share"] = common.ratio(row["rate"], limit)
    measurements = {name: [_median_by_share(by_n[n]) for n in clients] for name, by_n in every.items()}
    local = _mean_in_process(in_runs)
    info["loadavg_at_end"] = common.loadavg()
    result = {
        "benchmark": "mlp",
        "machine": info,
        "settings": {
            "clients": list(clients),
            "warmup_s": warmup_s,
            "duration_s": duration_s,
            "batch": {"max_size": BATCH, "max_delay_ms": MAX_DELAY_MS, "wait": list(batch_waits)},
            "modes": list(modes),
            "limits": limit_keys,
            "concurrency": 1,
            "torch_threads": 1,
            "device": device,
            "rounds": rounds,
            "compare": {label: str(root) for label, root in compare},
        },
        "in_process": local,
        "in_process_runs": in_runs,
        "results": measurements,
        "all_rounds": {name: {str(n): ms for n, ms in by_n.items()} for name, by_n in every.items()},
    }
    result["summary"] = summarize(result)
    print_report(result)
    return result


IN_PROCESS_KEYS = ("batch1", "batch1_json", f"batch{BATCH}", f"batch{BATCH}_json")
LIMIT_KEY = f"batch{BATCH}"


def _median_by_share(measurements: list[dict[str, Any]]) -> dict[str, Any]:
    """Of one point's rounds, the one with the median share of its round's limit (kept whole)."""
    ordered = sorted(measurements, key=lambda m: m["share"] or 0.0)
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["round_shares"] = [m["share"] for m in measurements]
    return chosen


def _print_in_process(local: dict[str, Any]) -> None:
    for key in IN_PROCESS_KEYS:
        m = local[key]
        print(f"  in-process {key:>12}: {m['samples_per_s']:9.0f} samples/s  call p50 {m['call_p50_ms']:.3f} ms")


def _mean_in_process(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The in-process limit is measured before, between and after servd's rounds; use the mean."""
    mean: dict[str, Any] = {"torch_threads": runs[0]["torch_threads"]}
    for key in IN_PROCESS_KEYS:
        first = runs[0][key]
        mean[key] = {
            k: sum(r[key][k] for r in runs) / len(runs)
            if k != "batch" and all(r[key][k] is not None for r in runs)
            else first[k]
            for k in first
        }
    return mean


def summarize(result: dict[str, Any]) -> list[dict[str, Any]]:
    local = result["in_process"]
    limits = result["settings"].get("limits", {})
    rows = []
    for name, ms in result["results"].items():
        key = limits.get(name, LIMIT_KEY)
        unbatched = key == "batch1"
        limit = local[key]["samples_per_s"]
        for m in ms:
            main = name in ("servd", f"servd {UNBATCHED}")
            target = TARGET_UNBATCHED_SHARE_AT_64 if unbatched else TARGET_SHARE_AT_64
            target = target if main and m["clients"] == 64 else None
            what = f"mlp {name} / in-process {key.replace('batch', 'batch ')} samples/s, {m['clients']} clients"
            rows.append(common.summary_row(what, m.get("share", common.ratio(m["rate"], limit)), target))
            if m["clients"] == 64 and not unbatched:
                target = TARGET_P99_MS_AT_64 if main else None
                rows.append(common.summary_row(f"mlp {name} p99 ms, 64 clients", m["p99_ms"], target, higher=False))
            if m["clients"] == 1 and unbatched:
                value = common.ratio(m["p50_ms"], local["batch1"]["call_p50_ms"])
                target = TARGET_UNBATCHED_P50_AT_1 if main else None
                what = f"mlp {name} p50 / in-process batch-1 call p50, 1 client"
                rows.append(common.summary_row(what, value, target, higher=False))
    return rows


def print_report(result: dict[str, Any]) -> None:
    local = result["in_process"]
    limit = local[f"batch{BATCH}"]["samples_per_s"]
    one = local["batch1"]["samples_per_s"]
    print()
    settings = result["settings"]
    print(
        f"mlp on {settings['device']}: servd batch.max_size {BATCH}, max_delay_ms {MAX_DELAY_MS} (unbatched: no "
        "batch block), concurrency 1, torch threads 1; "
        f"closed loop, {settings['duration_s']} s per point after {settings['warmup_s']} s warm-up"
    )
    headers = ["", "samples/s", "share of its limit", "p50 ms", "p99 ms", "mean batch", "server cpu",
               "cpu us/sample", "switches/req"]  # fmt: skip
    rows: list[list[Any]] = []
    for key in IN_PROCESS_KEYS:
        m = local[key]
        label = f"in-process {key.replace('batch', 'batch ').replace('_json', ' + json')}"
        rows.append([label, m["samples_per_s"], common.ratio(m["samples_per_s"], limit), m["call_p50_ms"],
                     m["call_p99_ms"], m["batch"], "100%", 1e6 / m["samples_per_s"], None])  # fmt: skip
    servd = [(name, m) for name, ms in result["results"].items() for m in ms]
    for name, m in sorted(servd, key=lambda item: item[1]["clients"]):
        rows.append([f"{name}, {m['clients']} clients", m["rate"], m.get("share"), m["p50_ms"],
                     m["p99_ms"], m["mean_batch"], f"{m['server_cpu']:.0%}", m["server_us_per_request"],
                     m["switches_per_request"]])  # fmt: skip
    print(common.table(headers, rows))
    print("share: batched servers and in-process rows of in-process batch 32, unbatched servers of batch 1")
    for name, ms in result["results"].items():
        first = ms[0]
        share = common.fmt(common.ratio(first["rate"], one))
        print(f"{name} at {first['clients']} client(s) / in-process batch 1: {share}")
    runs = " / ".join(common.fmt(r[LIMIT_KEY]["samples_per_s"]) for r in result["in_process_runs"])
    print(f"in-process batch {BATCH} before, between and after servd's rounds: {runs} samples/s")
    print("share = samples/s over the mean of the in-process runs either side of its round; median round shown")
    for name, ms in result["results"].items():
        for m in ms:
            shares = ", ".join(common.fmt(x) for x in m.get("round_shares", []))
            print(f"  {name} at {m['clients']} clients, share in each round: {shares}")
    machine = result["machine"]
    print(f"load average at start {machine['loadavg_at_start']}, at end {machine['loadavg_at_end']}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_load_arguments(parser)
    parser.add_argument("--device", default="cpu", help="where the model runs, in servd and in-process (cpu, cuda)")
    parser.add_argument(
        "--batch-wait",
        default="when_busy",
        help="batch.wait of the served endpoint; 'always,when_busy' measures both side by side",
    )
    parser.add_argument(
        "--modes",
        default=f"batched,{UNBATCHED}",
        help="which servers: batched (batch.max_size 32) and/or unbatched (no batch block)",
    )


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return run(
        **common.load_settings(args),
        device=args.device,
        batch_waits=tuple(args.batch_wait.split(",")),
        modes=tuple(args.modes.split(",")),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mlp", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.in_process:
        print(json.dumps(in_process(args.warmup, args.duration, args.device)))
        return 0
    result = run_from_args(args)
    print(f"written: {common.write_json('mlp', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
