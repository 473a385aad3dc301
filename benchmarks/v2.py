"""The MLP over the v2 protocol with binary tensors, against servd's JSON path, in one run.

One `servd run`, pinned to one core with torch threads 1, serves examples.mlp (256-1024-1024-16)
twice, each with batch.max_size 32 and concurrency 1: `mlp` takes JSON lists (servd's JSON path,
examples.mlp:MLP) and `mlp_t` declares tensors (x FP32 [-1, 256] -> y FP32 [-1, 16], rows
stacked by servd; examples.mlp:MLPTensors). N closed-loop clients each keep one request (one row
of 256 floats) in flight: over servd's websocket JSON protocol to `mlp`, then as v2 infer
requests with binary input and binary output to `mlp_t` (HTTP/1.1 keep-alive, a connection
each), then as v2 infer requests with JSON tensors. The in-process limit is MLPTensors called on a
stacked float32 array of 32 rows (and of 1), in a fresh process pinned to the same core.

    python -m benchmarks.v2 [--quick] [--clients 64] [--duration 5] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks import common
from benchmarks.mlp import BATCH, MAX_DELAY_MS, inputs

TARGET_BINARY_OVER_JSON = 2.0
PATHS = (
    "servd JSON (websocket)",
    "servd JSON (HTTP)",
    "v2 binary (HTTP)",
    "v2 JSON (HTTP)",
    "servd binary (websocket)",
)


def endpoints_yaml() -> str:
    batch = f"    batch: {{max_size: {BATCH}, max_delay_ms: {MAX_DELAY_MS}}}\n"
    return (
        "  mlp:\n    entrypoint: examples.mlp:MLP\n    device: cpu\n    concurrency: 1\n" + batch + "  mlp_t:\n"
        "    entrypoint: examples.mlp:MLPTensors\n    device: cpu\n    concurrency: 1\n" + batch + "    tensors:\n"
        "      inputs: [{name: x, datatype: FP32, shape: [-1, 256]}]\n"
        "      outputs: [{name: y, datatype: FP32, shape: [-1, 16]}]\n"
    )


# -- v2 requests -------------------------------------------------------------------------------


def servd_http_request(port: int, row: list[float]) -> bytes:
    """POST /v1/endpoints/mlp {"data": [...]}: servd's own JSON over HTTP."""
    body = json.dumps({"data": row}, separators=(",", ":")).encode()
    head = f"POST /v1/endpoints/mlp HTTP/1.1\r\nHost: {common.HOST}:{port}\r\nContent-Type: application/json\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def v2_request(port: int, row: list[float], binary: bool) -> bytes:
    """One infer request for `mlp_t`, as bytes on the wire (the same one each time, as the JSON
    workload sends the same data each time)."""
    import numpy as np

    if binary:
        raw = np.asarray([row], dtype="<f4").tobytes()
        described = {"name": "x", "datatype": "FP32", "shape": [1, 256], "parameters": {"binary_data_size": len(raw)}}
        header = {"inputs": [described], "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}
        head = json.dumps(header, separators=(",", ":")).encode()
        body, extra = head + raw, f"Inference-Header-Content-Length: {len(head)}\r\n"
    else:
        header = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 256], "data": row}]}
        body, extra = json.dumps(header, separators=(",", ":")).encode(), "Content-Type: application/json\r\n"
    start = f"POST /v2/models/mlp_t/infer HTTP/1.1\r\nHost: {common.HOST}:{port}\r\n{extra}"
    start += f"Content-Length: {len(body)}\r\n\r\n"
    return start.encode() + body


def binary_frames_workload(row: list[float]) -> common.Workload:
    """Binary websocket frames (servd/frames.py) to `mlp_t` on /v1/endpoints/mlp_t/ws, progress off."""
    import numpy as np

    raw = np.asarray([row], dtype="<f4").tobytes()
    described = json.dumps([{"name": "x", "datatype": "FP32", "shape": [1, 256], "size": len(raw)}])
    tail = f',"endpoint":"mlp_t","progress":false,"data":{described}}}'.encode()

    def message(seq: int) -> bytes:
        header = b'{"type":"submit","id":%d' % seq + tail
        return len(header).to_bytes(4, "little") + header + raw

    def is_reply(seq: int, payload: bytes) -> bool:
        return payload[4:].startswith(b'{"type":"completed","id":%d,' % seq)

    return common.Workload("/v1/endpoints/mlp_t/ws", message, is_reply, opcode=0x2)


@dataclass
class _Shared(common.Tally):
    request: bytes = field(kw_only=True)


class _HttpClient(asyncio.Protocol):
    """One keep-alive connection in a closed loop: send, read the whole response, send again."""

    def __init__(self, shared: _Shared) -> None:
        self.shared = shared
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sent_at = 0.0
        self.waiting = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.opened.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiting:
            self.waiting = False
            self.shared.wrong += 1
            self.shared.settle()

    def send_next(self) -> None:
        self.waiting = True
        self.shared.outstanding += 1
        self.sent_at = time.perf_counter()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(self.shared.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower() + b"\r\n"
        at = head.find(b"\r\ncontent-length:")  # not Inference-Header-Content-Length
        length = int(head[at + 17 : head.find(b"\r\n", at + 2)]) if at > 0 else 0
        if len(self.buffer) < end + 4 + length:
            return
        del self.buffer[: end + 4 + length]
        self._on_response(head.startswith(b"http/1.1 200"))

    def _on_response(self, ok: bool) -> None:
        self.waiting = False
        if self.shared.answered(self.sent_at, time.perf_counter(), ok):
            self.send_next()


async def http_closed_loop(
    server: common.Server, request: bytes, clients: int, warmup_s: float, duration_s: float
) -> common.Measurement:
    """common.closed_loop's measurement, for HTTP/1.1 keep-alive clients sending `request`."""
    loop = asyncio.get_running_loop()
    shared = _Shared(request=request)
    connections: list[_HttpClient] = []
    try:
        for _ in range(clients):
            _, client = await loop.create_connection(lambda: _HttpClient(shared), common.HOST, server.port)
            connections.append(client)
        return await common.measure_window(server, shared, connections, warmup_s, duration_s)
    finally:
        for client in connections:
            if client.transport is not None:
                client.transport.close()


# -- in-process (its own pinned process: python -m benchmarks.v2 --in-process) -----------------


def in_process(warmup_s: float, duration_s: float) -> dict[str, Any]:
    import numpy as np
    import torch

    from examples.mlp import MLPTensors

    torch.set_num_threads(1)
    model = MLPTensors("cpu")
    rows = np.asarray([json.loads(t) for t in inputs(BATCH)], dtype=np.float32)
    results: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
    for batch in (1, BATCH):
        stacked = np.ascontiguousarray(rows[:batch])
        latencies = _timed(lambda stacked=stacked: model({"x": stacked})["y"].numpy(), warmup_s, duration_s)
        elapsed = sum(latencies)
        results[f"batch{batch}"] = {
            "batch": batch,
            "calls": len(latencies),
            "samples_per_s": batch * len(latencies) / elapsed if elapsed else None,
            "call_p50_ms": (common.percentile(latencies, 0.5) or 0) * 1000,
        }
    return results


def _timed(call: Callable[[], Any], warmup_s: float, duration_s: float) -> list[float]:
    start = time.perf_counter()
    window, end = start + warmup_s, start + warmup_s + duration_s
    latencies = []
    while (t0 := time.perf_counter()) < end:
        call()
        if t0 >= window:
            latencies.append(time.perf_counter() - t0)
    return latencies


def run_in_process(warmup_s: float, duration_s: float) -> dict[str, Any]:
    argv = [*common.pin_prefix(common.SERVER_CORE), sys.executable, "-m", "benchmarks.v2", "--in-process"]
    argv += ["--warmup", str(warmup_s), "--duration", str(duration_s)]
    done = subprocess.run(argv, cwd=common.ROOT, capture_output=True, timeout=120 + 8 * (warmup_s + duration_s),
                          check=False)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"in-process run failed ({done.returncode}):\n{done.stderr.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return result


# -- the run -----------------------------------------------------------------------------------


def run(
    *,
    clients: tuple[int, ...] = (64,),
    warmup_s: float = 1.0,
    duration_s: float = 5.0,
    rounds: int = 1,
    compare: tuple[Any, ...] = (),
) -> dict[str, Any]:
    info = common.machine_info()
    common.pin_self(common.CLIENT_CORE)
    common.print_machine(info)
    row = json.loads(inputs(1)[0])
    in_runs = [run_in_process(warmup_s, duration_s)]
    every: dict[str, dict[int, list[dict[str, Any]]]] = {}
    with common.workdir() as work, common.servers() as running:
        server = common.start_servd("servd", common.servd_config(endpoints_yaml(), torch_threads=1), work)
        running.append(server)
        loads = {
            PATHS[0]: lambda n: common.closed_loop(server, common.servd_workload("mlp", row), n, warmup_s, duration_s),
            PATHS[1]: lambda n: http_closed_loop(server, servd_http_request(server.port, row), n, warmup_s, duration_s),
            PATHS[2]: lambda n: http_closed_loop(server, v2_request(server.port, row, True), n, warmup_s, duration_s),
            PATHS[3]: lambda n: http_closed_loop(server, v2_request(server.port, row, False), n, warmup_s, duration_s),
            PATHS[4]: lambda n: common.closed_loop(server, binary_frames_workload(row), n, warmup_s, duration_s),
        }
        for round_ in range(rounds):
            for n in clients:
                for path, load in loads.items():
                    m = asyncio.run(load(n))
                    every.setdefault(path, {}).setdefault(n, []).append(m.as_dict())
                    print(f"  round {round_ + 1} {path:<24} {common.progress_line(m)}", flush=True)
        in_runs.append(run_in_process(warmup_s, duration_s))
    limit = sum(r[f"batch{BATCH}"]["samples_per_s"] for r in in_runs) / len(in_runs)
    results = {path: [common.median_by_rate(by_n[n]) for n in clients] for path, by_n in every.items()}
    info["loadavg_at_end"] = common.loadavg()
    result = {
        "benchmark": "v2",
        "machine": info,
        "settings": {
            "clients": list(clients),
            "warmup_s": warmup_s,
            "duration_s": duration_s,
            "rounds": rounds,
            "batch": {"max_size": BATCH, "max_delay_ms": MAX_DELAY_MS},
            "torch_threads": 1,
        },
        "in_process_runs": in_runs,
        "in_process_batch32_samples_per_s": limit,
        "results": results,
    }
    result["summary"] = summarize(result)
    print_report(result)
    return result


def summarize(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    limit = result["in_process_batch32_samples_per_s"]
    json_ws, json_http, binary, v2_json, frames = (result["results"][p] for p in PATHS)
    for j, jh, b, vj, f in zip(json_ws, json_http, binary, v2_json, frames, strict=True):
        n = b["clients"]
        target = TARGET_BINARY_OVER_JSON if n == 64 else None
        over_json, share = common.ratio(b["rate"], j["rate"]), common.ratio(b["rate"], limit)
        rows.append(
            common.summary_row(f"mlp v2 binary / servd JSON websocket samples/s, {n} clients", over_json, target)
        )
        over_http = common.ratio(b["rate"], jh["rate"])
        rows.append(common.summary_row(f"mlp v2 binary / servd JSON HTTP samples/s, {n} clients", over_http, None))
        rows.append(common.summary_row(f"mlp v2 binary / in-process batch {BATCH} stacked, {n} clients", share, None))
        v2_json_over = common.ratio(vj["rate"], j["rate"])
        rows.append(common.summary_row(f"mlp v2 JSON / servd JSON samples/s, {n} clients", v2_json_over, None))
        frames_over = common.ratio(f["rate"], j["rate"])
        rows.append(common.summary_row(f"mlp binary frames / servd JSON websocket, {n} clients", frames_over, None))
        rows.append(
            common.summary_row(
                f"mlp binary frames / in-process batch {BATCH}, {n} clients", common.ratio(f["rate"], limit), None
            )
        )
    return rows


def print_report(result: dict[str, Any]) -> None:
    limit = result["in_process_batch32_samples_per_s"]
    print()
    headers = ["", "samples/s", "share of batch-32 limit", "p50 ms", "p99 ms", "server cpu", "cpu us/sample"]
    rows: list[list[Any]] = []
    for key in ("batch1", f"batch{BATCH}"):
        m = result["in_process_runs"][0][key]
        label = f"in-process {key.replace('batch', 'batch ')} (stacked array)"
        share = common.ratio(m["samples_per_s"], limit)
        rows.append([label, m["samples_per_s"], share, m["call_p50_ms"], None, "100%", 1e6 / m["samples_per_s"]])
    for path, ms in result["results"].items():
        for m in ms:
            label, share = f"{path}, {m['clients']} clients", common.ratio(m["rate"], limit)
            cpu = f"{m['server_cpu']:.0%}"
            rows.append([label, m["rate"], share, m["p50_ms"], m["p99_ms"], cpu, m["server_us_per_request"]])
    print(common.table(headers, rows))
    for row in result["summary"]:
        print(f"  {row['what']}: {common.fmt(row['value'])}" + (f" (target {row['target']})" if row["target"] else ""))
    runs = " / ".join(common.fmt(r[f"batch{BATCH}"]["samples_per_s"]) for r in result["in_process_runs"])
    print(f"in-process batch {BATCH} before and after servd's rounds: {runs} samples/s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_load_arguments(parser)
    parser.set_defaults(clients="64")


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    settings = common.load_settings(args)
    settings.pop("compare")
    return run(**settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.v2", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.in_process:
        print(json.dumps(in_process(args.warmup, args.duration)))
        return 0
    result = run_from_args(args)
    print(f"written: {common.write_json('v2', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
