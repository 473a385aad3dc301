"""The MLP over the v2 protocol with binary tensors, against servd's JSON path, in one run.

One `servd run`, pinned to one core with torch threads 1, serves examples.mlp (256-1024-1024-16)
twice, each with batch.max_size 32 and concurrency 1: `mlp` takes JSON lists (servd's JSON path,
examples.mlp:MLP, one sample a request) and `mlp_t` declares tensors (x FP32 [-1, 256] -> y FP32
[-1, 16], rows stacked by servd; examples.mlp:MLPTensors). N closed-loop clients each keep one
request of R rows (`--rows`, default 1 and 32) in flight, path by path: servd's JSON over its
websocket and over HTTP, v2 infer requests with binary input and binary output (HTTP/1.1
keep-alive, a connection each), v2 infer requests with JSON tensors, and servd's binary websocket
frames. samples/s counts rows. The in-process limit is MLPTensors called on a stacked float32
array of 32 rows (and of 1), in a fresh process pinned to the same core.

What servd's JSON path sends for R rows: at 1 row, one sample to `mlp`, as a JSON client of
servd does. `mlp` takes one sample a request, so at R > 1 rows the JSON clients send the R rows
as one request to `mlp_t` in servd's own JSON for tensors (`{"data": [[...256...], ...R]}`):
the same endpoint, the same number of requests and the same stacked call as the binary paths, so
the ratio is what the encoding costs, not the transport. (R single-sample requests to `mlp`
would pay R requests' transport, ~140 us each on the websocket, and flatter binary.)

At 1 row a request the rate is set by the per-request transport (Tornado's HTTP or websocket
handling), not by the encoding of 256 floats; at 32 rows the encoding is most of what a request
costs besides the model.

--compare NAME=PATH measures the same paths on servd from another checkout, started beside this
one and loaded in turn within each round, for a before/after in one run.

    python -m benchmarks.v2 [--quick] [--clients 64] [--rows 1,32] [--duration 5] [--rounds 1]
                            [--compare NAME=PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
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


# -- what each path sends ----------------------------------------------------------------------

Rows = list[list[float]]


def json_data(rows: Rows) -> tuple[str, Any]:
    """servd's JSON path: one sample to `mlp` at 1 row; R rows as one request to `mlp_t` (see above)."""
    return ("mlp", rows[0]) if len(rows) == 1 else ("mlp_t", rows)


def servd_http_request(port: int, rows: Rows) -> bytes:
    """POST /v1/endpoints/{mlp|mlp_t} {"data": ...}: servd's own JSON over HTTP."""
    endpoint, data = json_data(rows)
    body = json.dumps({"data": data}, separators=(",", ":")).encode()
    head = f"POST /v1/endpoints/{endpoint} HTTP/1.1\r\nHost: {common.HOST}:{port}\r\nContent-Type: application/json\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def v2_request(port: int, rows: Rows, binary: bool) -> bytes:
    """One infer request of len(rows) rows for `mlp_t`, as bytes on the wire (the same one each
    time, as the JSON workload sends the same data each time); JSON data flat, as tritonclient
    sends it."""
    import numpy as np

    shape = [len(rows), len(rows[0])]
    if binary:
        raw = np.asarray(rows, dtype="<f4").tobytes()
        described = {"name": "x", "datatype": "FP32", "shape": shape, "parameters": {"binary_data_size": len(raw)}}
        header = {"inputs": [described], "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}
        head = json.dumps(header, separators=(",", ":")).encode()
        body, extra = head + raw, f"Inference-Header-Content-Length: {len(head)}\r\n"
    else:
        flat = [value for row in rows for value in row]
        header = {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": flat}]}
        body, extra = json.dumps(header, separators=(",", ":")).encode(), "Content-Type: application/json\r\n"
    start = f"POST /v2/models/mlp_t/infer HTTP/1.1\r\nHost: {common.HOST}:{port}\r\n{extra}"
    start += f"Content-Length: {len(body)}\r\n\r\n"
    return start.encode() + body


def binary_frames_workload(rows: Rows) -> common.Workload:
    """Binary websocket frames (servd/protocols/frames.py) to `mlp_t` on /v1/endpoints/mlp_t/ws, progress off."""
    import numpy as np

    raw = np.asarray(rows, dtype="<f4").tobytes()
    described = json.dumps([{"name": "x", "datatype": "FP32", "shape": [len(rows), len(rows[0])], "size": len(raw)}])
    tail = f',"endpoint":"mlp_t","progress":false,"data":{described}}}'.encode()

    def message(seq: int) -> bytes:
        header = b'{"type":"submit","id":%d' % seq + tail
        return len(header).to_bytes(4, "little") + header + raw

    def is_reply(seq: int, payload: bytes) -> bool:
        return payload[4:].startswith(b'{"type":"completed","id":%d,' % seq)

    return common.Workload("/v1/endpoints/mlp_t/ws", message, is_reply, opcode=0x2)


def loads(server: common.Server, rows: Rows, warmup_s: float, duration_s: float) -> dict[str, Any]:
    """Each path's closed loop against `server`, by client count; samples/s counts the rows."""
    r = len(rows)
    endpoint, data = json_data(rows)
    return {
        PATHS[0]: lambda n: common.closed_loop(
            server, common.servd_workload(endpoint, data), n, warmup_s, duration_s, per_request=r
        ),
        PATHS[1]: lambda n: http_closed_loop(server, servd_http_request(server.port, rows), n, warmup_s, duration_s, r),
        PATHS[2]: lambda n: http_closed_loop(server, v2_request(server.port, rows, True), n, warmup_s, duration_s, r),
        PATHS[3]: lambda n: http_closed_loop(server, v2_request(server.port, rows, False), n, warmup_s, duration_s, r),
        PATHS[4]: lambda n: common.closed_loop(
            server, binary_frames_workload(rows), n, warmup_s, duration_s, per_request=r
        ),
    }


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
    server: common.Server, request: bytes, clients: int, warmup_s: float, duration_s: float, per_request: int = 1
) -> common.Measurement:
    """common.closed_loop's measurement, for HTTP/1.1 keep-alive clients sending `request`
    (`per_request` samples each)."""
    loop = asyncio.get_running_loop()
    shared = _Shared(request=request)
    connections: list[_HttpClient] = []
    try:
        for _ in range(clients):
            _, client = await loop.create_connection(lambda: _HttpClient(shared), common.HOST, server.port)
            connections.append(client)
        return await common.measure_window(server, shared, connections, warmup_s, duration_s, per_request)
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
        latencies = _timed(functools.partial(_call, model, stacked), warmup_s, duration_s)
        elapsed = sum(latencies)
        results[f"batch{batch}"] = {
            "batch": batch,
            "calls": len(latencies),
            "samples_per_s": batch * len(latencies) / elapsed if elapsed else None,
            "call_p50_ms": (common.percentile(latencies, 0.5) or 0) * 1000,
        }
    return results


def _call(model: Any, stacked: Any) -> Any:
    return model({"x": stacked})["y"].numpy()


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
    rows: tuple[int, ...] = (1, BATCH),
    warmup_s: float = 1.0,
    duration_s: float = 5.0,
    rounds: int = 1,
    compare: tuple[tuple[str, Path], ...] = (),
) -> dict[str, Any]:
    info = common.machine_info()
    common.pin_self(common.CLIENT_CORE)
    common.print_machine(info)
    samples = [json.loads(text) for text in inputs(max(rows))]
    in_runs = [run_in_process(warmup_s, duration_s)]
    # every[label][rows][path][clients]: each round's measurement
    every: dict[str, dict[int, dict[str, dict[int, list[dict[str, Any]]]]]] = {}
    with common.workdir() as work, common.servers() as running:
        by_label = {}
        for label, root in [("servd", common.ROOT), *compare]:
            config = common.servd_config(endpoints_yaml(), torch_threads=1)
            running.append(common.start_servd(label, config, work, root=root))
            by_label[label] = running[-1]
        for round_ in range(rounds):
            for r in rows:
                per_label = {
                    label: loads(server, samples[:r], warmup_s, duration_s) for label, server in by_label.items()
                }
                for n in clients:
                    for path in PATHS:
                        for label, paths in per_label.items():  # the checkouts in turn, path by path
                            m = asyncio.run(paths[path](n))
                            every.setdefault(label, {}).setdefault(r, {}).setdefault(path, {}).setdefault(n, [])
                            every[label][r][path][n].append(m.as_dict())
                            where = f"{label} " if compare else ""
                            print(
                                f"  round {round_ + 1} {r:>2} rows {where}{path:<24} {common.progress_line(m)}",
                                flush=True,
                            )
        in_runs.append(run_in_process(warmup_s, duration_s))
    limit = sum(r[f"batch{BATCH}"]["samples_per_s"] for r in in_runs) / len(in_runs)
    results = {
        label: {str(r): {path: [common.median_by_rate(by_n[n]) for n in clients] for path, by_n in by_path.items()}
                for r, by_path in by_rows.items()}
        for label, by_rows in every.items()
    }  # fmt: skip
    info["loadavg_at_end"] = common.loadavg()
    result = {
        "benchmark": "v2",
        "machine": info,
        "settings": {
            "clients": list(clients),
            "rows": list(rows),
            "warmup_s": warmup_s,
            "duration_s": duration_s,
            "rounds": rounds,
            "batch": {"max_size": BATCH, "max_delay_ms": MAX_DELAY_MS},
            "torch_threads": 1,
            "compare": {label: str(root) for label, root in compare},
        },
        "in_process_runs": in_runs,
        "in_process_batch32_samples_per_s": limit,
        "results": results,
        "rounds": {label: {str(r): by_path for r, by_path in by_rows.items()} for label, by_rows in every.items()},
    }
    result["summary"] = summarize(result)
    print_report(result)
    return result


def summarize(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The target at each row count (at 1 row the transport sets the rate, so it is named so),
    the shares of the in-process limit, and each compared checkout's v2 binary rate."""
    out = []
    limit = result["in_process_batch32_samples_per_s"]
    ours = result["results"]["servd"]
    for r, by_path in ours.items():
        json_ws, json_http, binary, v2_json, frames = (by_path[p] for p in PATHS)
        bound = "transport-bound" if r == "1" else "encoding counts"
        for j, jh, b, vj, f in zip(json_ws, json_http, binary, v2_json, frames, strict=True):
            n = b["clients"]
            at = f"{r} row{'s' if r != '1' else ''} a request, {n} clients"
            target = TARGET_BINARY_OVER_JSON if n == 64 else None
            rate = b["rate"]
            row = functools.partial(common.summary_row, target=None)
            out += [
                row(f"mlp v2 binary / servd JSON websocket, {at} ({bound})", rate / j["rate"], target=target),
                row(f"mlp v2 binary / servd JSON HTTP, {at}", common.ratio(rate, jh["rate"])),
                row(f"mlp v2 binary / in-process batch {BATCH} stacked, {at}", common.ratio(rate, limit)),
                row(f"mlp v2 JSON / servd JSON websocket, {at}", common.ratio(vj["rate"], j["rate"])),
                row(f"mlp binary frames / servd JSON websocket, {at}", common.ratio(f["rate"], j["rate"])),
                row(f"mlp binary frames / in-process batch {BATCH}, {at}", common.ratio(f["rate"], limit)),
            ]
            for label, theirs in result["results"].items():
                if label != "servd":
                    other = theirs[r][PATHS[2]][json_ws.index(j)]["rate"]
                    out.append(
                        common.summary_row(
                            f"mlp v2 binary HTTP, servd / {label}, {at}", common.ratio(rate, other), None
                        )
                    )
    return out


def print_report(result: dict[str, Any]) -> None:
    limit = result["in_process_batch32_samples_per_s"]
    print()
    headers = [
        "",
        "rows/req",
        "samples/s",
        "share of batch-32 limit",
        "p50 ms",
        "p99 ms",
        "server cpu",
        "cpu us/request",
        "cpu us/sample",
    ]
    rows: list[list[Any]] = []
    for key in ("batch1", f"batch{BATCH}"):
        m = result["in_process_runs"][0][key]
        label = f"in-process {key.replace('batch', 'batch ')} (stacked array)"
        share, us = common.ratio(m["samples_per_s"], limit), 1e6 / m["samples_per_s"]
        rows.append([label, m["batch"], m["samples_per_s"], share, m["call_p50_ms"], None, "100%", us * m["batch"], us])
    for checkout, by_rows in result["results"].items():
        for r, by_path in by_rows.items():
            for path, ms in by_path.items():
                for m in ms:
                    label = (
                        f"{checkout}: {path}, {m['clients']} clients"
                        if len(result["results"]) > 1
                        else f"{path}, {m['clients']} clients"
                    )
                    us = m["server_us_per_request"]
                    rows.append([label, int(r), m["rate"], common.ratio(m["rate"], limit), m["p50_ms"], m["p99_ms"],
                                 f"{m['server_cpu']:.0%}", us, None if us is None else us / int(r)])  # fmt: skip
    print(common.table(headers, rows))
    for row in result["summary"]:
        print(f"  {row['what']}: {common.fmt(row['value'])}" + (f" (target {row['target']})" if row["target"] else ""))
    runs = " / ".join(common.fmt(r[f"batch{BATCH}"]["samples_per_s"]) for r in result["in_process_runs"])
    print(f"in-process batch {BATCH} before and after servd's rounds: {runs} samples/s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_load_arguments(parser)
    parser.add_argument(
        "--rows", default=f"1,{BATCH}", help=f"comma-separated rows a request carries (at most {BATCH})"
    )
    parser.set_defaults(clients="64")


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    rows = tuple(int(r) for r in args.rows.split(","))
    if not all(1 <= r <= BATCH for r in rows):
        raise SystemExit(f"--rows {args.rows}: each must be 1 to {BATCH} (batch.max_size; a larger request is refused)")
    return run(**common.load_settings(args), rows=rows)


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
