"""Sharing one batched endpoint: a flooding client against interactive ones, under fifo, fair and priorities.

One client floods (a closed loop keeping 200 requests in flight over one websocket) while 8
interactive clients each keep one request in flight on their own websocket. Every client has
its own token (a tokens_file written for the run, sent as `?token=`), since all of them connect
from 127.0.0.1 and `order: fair` tells clients apart by token, else by address. The endpoint is
batched (`batch.max_size` 16, `max_delay_ms` 2, concurrency 1) and served three ways, each by its
own `servd run` pinned to core 0, measured in turn within each round (the load generator runs
on core 1):

- `fifo`: one level, arrival order (servd's default);
- `fair`: one level, `queue.order: fair` (clients round-robin);
- `priority`: `queue.priority_levels: 2`, `order: fifo`; the interactive clients ask for
  priority 1, and the flood's token is limited to level 2 (`priority=2` in the tokens file).

Two models: `sleep` (examples.faults:sleep_batch, 20 ms a batch whatever its size: the
scheduling alone, with the core mostly idle) and `mlp` (examples.mlp:MLP on the CPU, torch
threads 1: the core saturated, so scheduling costs show in throughput, and so does the noise
of a shared machine).

Reported per mode: the interactive clients' wait (`timing.queue_s`) and end-to-end latency,
p50/p99; the flood's wait; total throughput (every completed request, both kinds); server CPU
per request. Targets (issue 12): interactive p99 wait under `fair` at most 1/10 of under
`fifo`, and total throughput under `fair` not more than 5% below `fifo`, each judged as the
median over rounds of the ratio within a round. Bounded: `rounds` x 3 modes x (warm-up +
window), plus at most 15 s of drain each; about 2 minutes with the defaults.

    python -m benchmarks.scheduling [--quick] [--duration 6] [--rounds 2] [--models sleep,mlp]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common, mlp
from benchmarks.soak import WsConn, open_ws

MODES = ("fifo", "fair", "priority")
ENTRYPOINTS = {"sleep": "examples.faults:sleep_batch", "mlp": "examples.mlp:MLP"}
MODELS = tuple(ENTRYPOINTS)
FLOOD_IN_FLIGHT = 200
INTERACTIVE = 8
BATCH = 16
MAX_DELAY_MS = 2
SLEEP_S = 0.02  # --models sleep: each batch call sleeps this long, whatever its size
TARGET_FAIR_WAIT_RATIO = 0.1  # fair's interactive p99 wait over fifo's
TARGET_THROUGHPUT_RATIO = 0.95  # fair's total req/s over fifo's
DRAIN_S = 15.0  # after a window, the longest wait for the answers still in flight (then counted lost)
MAX_REQUESTS = 1_000_000  # per measurement, warm-up included: a bound on count as well as time


# -- the servers -----------------------------------------------------------------------------


def tokens_text() -> str:
    users = "".join(f"user{i}\n" for i in range(INTERACTIVE))
    return f"# written by benchmarks.scheduling\noperator\nflood priority=2\n{users}"


def endpoint_yaml(mode: str, model: str) -> str:
    queue = {"fifo": "{order: fifo}", "fair": "{order: fair}", "priority": "{priority_levels: 2, order: fifo}"}[mode]
    return (
        "  shared:\n"
        f"    entrypoint: {ENTRYPOINTS[model]}\n"
        + ("    device: cpu\n" if model == "mlp" else "")
        + "    concurrency: 1\n"
        f"    queue: {queue}\n"
        f"    batch: {{max_size: {BATCH}, max_delay_ms: {MAX_DELAY_MS}}}\n"
    )


def config(mode: str, model: str, tokens: Path) -> str:
    text = common.servd_config(endpoint_yaml(mode, model), log_level="warning", torch_threads=1)
    return text.replace("server:\n", f"server:\n  tokens_file: {tokens}\n", 1)


# -- the load --------------------------------------------------------------------------------


@dataclass
class Side:
    """What one kind of client (the flood, or the interactive ones together) got in the window."""

    waits: list[float] = field(default_factory=list)  # timing.queue_s, seconds
    latencies: list[float] = field(default_factory=list)  # send to answer, seconds
    errors: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        def ms(values: list[float], q: float) -> float | None:
            value = common.percentile(values, q)
            return None if value is None else round(value * 1000, 3)

        return {
            "completed": len(self.latencies),
            "wait_p50_ms": ms(self.waits, 0.5),
            "wait_p99_ms": ms(self.waits, 0.99),
            "latency_p50_ms": ms(self.latencies, 0.5),
            "latency_p99_ms": ms(self.latencies, 0.99),
            "errors": dict(self.errors),
        }


@dataclass
class Load:
    """The shared state of one measurement: whether to send and to record, and what is in flight."""

    sending: bool = True
    recording: bool = False
    sent: int = 0
    in_flight: int = 0
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    wrong: int = 0


class Stream:
    """One client: a websocket keeping `depth` requests in flight, each answered one sent anew."""

    def __init__(self, load: Load, side: Side, depth: int, data_json: bytes, fields: bytes) -> None:
        self.load = load
        self.side = side
        self.depth = depth
        self.tail = b',"progress":false,"data":' + data_json + fields + b"}"
        self.sent_at: dict[int, float] = {}
        self.seq = 0
        self.conn: WsConn | None = None

    async def open(self, port: int, token: str) -> None:
        self.conn = await open_ws(port, f"/v1/endpoints/shared/ws?token={token}", self.on_text)

    def start(self) -> None:
        for _ in range(self.depth):
            self.send()

    def send(self) -> None:
        assert self.conn is not None
        self.seq += 1
        self.sent_at[self.seq] = time.perf_counter()
        self.load.in_flight += 1
        self.load.sent += 1
        if self.load.sent >= MAX_REQUESTS:
            self.load.sending = False
        self.conn.send(b'{"type":"submit","id":%d' % self.seq + self.tail)

    def on_text(self, payload: bytes) -> None:
        now = time.perf_counter()
        message = json.loads(payload)
        sent_at = self.sent_at.pop(message.get("id"), None)
        if sent_at is None:
            self.load.wrong += 1
            return
        self.load.in_flight -= 1
        if self.load.recording:
            if message.get("type") == "completed":
                self.side.latencies.append(now - sent_at)
                self.side.waits.append(float(message["timing"]["queue_s"]))
            else:
                self.side.errors[str(message.get("error", {}).get("code", message.get("type")))] += 1
        if self.load.sending:
            self.send()
        elif self.load.in_flight == 0:
            self.load.drained.set()

    def close(self) -> None:
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.close()


async def measure(
    server: common.Server, mode: str, data_json: bytes, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    """The flood and the interactive clients on `server` for a warm-up and a window."""
    load, flood, interactive = Load(), Side(), Side()
    user_fields = b',"priority":1' if mode == "priority" else b""
    streams = [Stream(load, flood, FLOOD_IN_FLIGHT, data_json, b"")]
    streams += [Stream(load, interactive, 1, data_json, user_fields) for _ in range(INTERACTIVE)]
    try:
        await streams[0].open(server.port, "flood")
        for i, stream in enumerate(streams[1:]):
            await stream.open(server.port, f"user{i}")
        for stream in streams:
            stream.start()
        await asyncio.sleep(warmup_s)
        cpu0, t0, batches0 = server.cpu_s(), time.perf_counter(), batch_counters(server)
        load.recording = True
        await asyncio.sleep(duration_s)
        load.recording = False
        elapsed, cpu = time.perf_counter() - t0, server.cpu_s() - cpu0
        batches = [b - a for a, b in zip(batches0, batch_counters(server), strict=True)]
        load.sending = False
        if load.in_flight:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(load.drained.wait(), DRAIN_S)
    finally:
        for stream in streams:
            stream.close()
    completed = len(flood.latencies) + len(interactive.latencies)
    return {
        "mode": mode,
        "seconds": round(elapsed, 3),
        "throughput_rps": round(completed / elapsed, 1),
        "server_us_per_request": round(cpu * 1e6 / completed, 1) if completed else None,
        "server_cpu": round(cpu / elapsed, 3),  # share of one core
        "mean_batch": round(batches[0] / batches[1], 2) if batches[1] else None,
        "interactive": interactive.summary(),
        "flood": flood.summary(),
        "wrong": load.wrong,
        "lost": load.in_flight,  # no answer within DRAIN_S of the end: servd answers every request, so a bug
    }


def batch_counters(server: common.Server) -> tuple[float, float]:
    """(sum, count) of servd_batch_size for the endpoint, from /metrics (the operator's token)."""
    request = urllib.request.Request(
        f"http://{common.HOST}:{server.port}/metrics", headers={"Authorization": "Bearer operator"}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        text = reply.read().decode()

    def value(name: str) -> float:
        match = re.search(rf'^servd_batch_size_{name}\{{endpoint="shared"\}} (\S+)$', text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    return value("sum"), value("count")


# -- the run ---------------------------------------------------------------------------------


def run(
    *, warmup_s: float = 1.5, duration_s: float = 6.0, rounds: int = 2, models: tuple[str, ...] = MODELS
) -> dict[str, Any]:
    info = common.machine_info()
    common.pin_self(common.CLIENT_CORE)
    common.print_machine(info)
    by_model = {model: run_model(model, warmup_s, duration_s, rounds) for model in models}
    info["loadavg_at_end"] = common.loadavg()
    result: dict[str, Any] = {
        "machine": info,
        "settings": {
            "flood_in_flight": FLOOD_IN_FLIGHT, "interactive_clients": INTERACTIVE,
            "batch": {"max_size": BATCH, "max_delay_ms": MAX_DELAY_MS}, "concurrency": 1, "torch_threads": 1,
            "sleep_s": SLEEP_S, "warmup_s": warmup_s, "duration_s": duration_s, "rounds": rounds,
        },
        "models": by_model,
        "summary": [row for model, measured in by_model.items() for row in summarize(model, measured)],
    }  # fmt: skip
    for model, measured in by_model.items():
        print_report(model, measured, rounds)
    print(f"load average at start {info['loadavg_at_start']}, at end {info['loadavg_at_end']}")
    return result


def run_model(model: str, warmup_s: float, duration_s: float, rounds: int) -> dict[str, Any]:
    """The three modes of one model, each its own server, measured in turn in each round."""
    print(f"  {model}: {ENTRYPOINTS[model]}", flush=True)
    data = json.loads(mlp.inputs(1)[0]) if model == "mlp" else SLEEP_S
    data_json = json.dumps(data, separators=(",", ":")).encode()
    every: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    with common.workdir() as work, common.servers() as running:
        tokens = work / "tokens.txt"
        tokens.write_text(tokens_text())
        servers = {}
        for mode in MODES:
            servers[mode] = common.start_servd(mode, config(mode, model, tokens), work)
            running.append(servers[mode])
        for round_ in range(rounds):
            for mode in MODES:  # in turn within a round: load that comes and goes hits all three
                m = asyncio.run(measure(servers[mode], mode, data_json, warmup_s, duration_s))
                every[mode].append(m)
                print(f"  round {round_ + 1} {progress_line(m)}", flush=True)
    return {"rounds": every, "results": {mode: _median_round(ms) for mode, ms in every.items()}}


def _median_round(measurements: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median interactive p99 wait (kept whole)."""
    ordered = sorted(measurements, key=lambda m: m["interactive"]["wait_p99_ms"] or 0.0)
    return ordered[(len(ordered) - 1) // 2]


def round_ratios(measured: dict[str, Any]) -> dict[str, list[float | None]]:
    """Per round, fair over fifo: interactive p99 wait, and total throughput (same round, so the
    machine's drift cancels out)."""
    pairs = list(zip(measured["rounds"]["fifo"], measured["rounds"]["fair"], strict=True))
    return {
        "wait_p99": [common.ratio(b["interactive"]["wait_p99_ms"], a["interactive"]["wait_p99_ms"]) for a, b in pairs],
        "throughput": [common.ratio(b["throughput_rps"], a["throughput_rps"]) for a, b in pairs],
    }


def summarize(model: str, measured: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's two targets, as the median over rounds of each round's fair / fifo ratio."""
    ratios = round_ratios(measured)
    wait, throughput = _median(ratios["wait_p99"]), _median(ratios["throughput"])
    return [
        common.summary_row(f"scheduling ({model}): interactive p99 wait, fair / fifo", wait, TARGET_FAIR_WAIT_RATIO,
                           higher=False),
        common.summary_row(f"scheduling ({model}): total req/s, fair / fifo", throughput, TARGET_THROUGHPUT_RATIO),
    ]  # fmt: skip


def _median(values: list[float | None]) -> float | None:
    known = sorted(v for v in values if v is not None)
    return known[(len(known) - 1) // 2] if known else None


def progress_line(m: dict[str, Any]) -> str:
    i, f = m["interactive"], m["flood"]
    return (
        f"{m['mode']:<8} interactive wait p50/p99 {common.fmt(i['wait_p50_ms'])}/{common.fmt(i['wait_p99_ms'])} ms"
        f"  latency {common.fmt(i['latency_p50_ms'])}/{common.fmt(i['latency_p99_ms'])} ms"
        f"  flood wait p50 {common.fmt(f['wait_p50_ms'])} ms  {m['throughput_rps']:.0f} req/s"
        f"  batch {common.fmt(m['mean_batch'])}  server cpu {m['server_cpu']:.0%}"
        f" {common.fmt(m['server_us_per_request'], 0)} us/req"
        + (f"  ERRORS {i['errors'] | f['errors']}" if i["errors"] or f["errors"] else "")
        + (f"  WRONG {m['wrong']}" if m["wrong"] else "")
        + (f"  LOST {m['lost']}" if m["lost"] else "")
    )


def print_report(model: str, measured: dict[str, Any], rounds: int) -> None:
    print()
    print(
        f"{ENTRYPOINTS[model]}, batch.max_size {BATCH}; 1 flooding client ({FLOOD_IN_FLIGHT} in flight) and "
        f"{INTERACTIVE} interactive clients (1 in flight each); the median round of {rounds} "
        "(by interactive p99 wait):"
    )
    headers = ["mode", "wait p50 ms", "wait p99 ms", "latency p50 ms", "latency p99 ms", "flood wait p50 ms",
               "total req/s", "mean batch", "server us/req"]  # fmt: skip
    rows = [
        [mode, m["interactive"]["wait_p50_ms"], m["interactive"]["wait_p99_ms"], m["interactive"]["latency_p50_ms"],
         m["interactive"]["latency_p99_ms"], m["flood"]["wait_p50_ms"], m["throughput_rps"], m["mean_batch"],
         m["server_us_per_request"]]
        for mode, m in measured["results"].items()
    ]  # fmt: skip
    print(common.table(headers, rows))
    ratios = round_ratios(measured)
    print("fair / fifo in each round: interactive p99 wait " + ", ".join(common.fmt(r, 3) for r in ratios["wait_p99"]))
    print("                           total req/s " + ", ".join(common.fmt(r, 3) for r in ratios["throughput"]))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="short warm-up and windows (0.5 s + 2 s), one round")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds measured per mode and round")
    parser.add_argument("--warmup", type=float, default=1.5, help="seconds of load before each window")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three modes, in turn")
    parser.add_argument(
        "--models", default=",".join(MODELS),
        help=f"sleep: examples.faults:sleep_batch, {SLEEP_S}s a batch; mlp: examples.mlp:MLP on the CPU "
        f"(default: {','.join(MODELS)})",
    )  # fmt: skip


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    models = tuple(args.models.split(","))
    if not set(models) <= set(MODELS):
        raise SystemExit(f"--models: choose from {', '.join(MODELS)}, got {args.models!r}")
    if args.quick:
        return run(warmup_s=0.5, duration_s=2.0, rounds=1, models=models)
    return run(warmup_s=args.warmup, duration_s=args.duration, rounds=args.rounds, models=models)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scheduling", description=__doc__.splitlines()[0])
    add_arguments(parser)
    result = run_from_args(parser.parse_args(argv))
    print(f"written: {common.write_json('scheduling', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
