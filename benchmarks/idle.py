"""Idle clients: how many idle websockets one daemon holds, its RSS, and an active client's latency meanwhile.

`servd run` (pinned, like every benchmark server) with server.max_connections above N; the load
generator (its own open-files soft limit raised to its hard limit) opens N websockets that
complete the handshake and then only answer pings, as an idle browser tab does. Before and
while they are open, one active client sends echo requests one at a time on its own socket
for a fixed window (so the daemon's pings to the idle ones fall inside it) and keeps the
latencies. Targets (issue 7): 10,000 idle clients with RSS under 1 GiB, active p50 under 5 ms.

    python -m benchmarks.idle [--clients 10000] [--duration 25] [--ping 20] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
from typing import Any

from benchmarks import common
from benchmarks.soak import WsConn, fetch, open_ws, rss_kb

TARGET_CLIENTS = 10_000
TARGET_RSS_MB = 1024
TARGET_P50_MS = 5.0
CHUNK = 64  # handshakes in flight at once


def raise_open_files() -> int:
    """The load generator holds one descriptor per client: raise its soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def config(clients: int, ping_s: float) -> str:
    return (
        "version: 1\n"
        "server:\n"
        f"  host: {common.HOST}\n"
        "  port: 0\n"
        f"  max_connections: {clients + 100}\n"
        f"  ping_interval_s: {ping_s}\n"
        "  log: {format: json, level: warning}\n"
        "endpoints:\n"
        "  echo:\n"
        "    entrypoint: examples.echo:echo\n"
    )


async def open_idle(port: int, count: int) -> list[WsConn]:
    """`count` websockets that only answer pings; prints progress every few thousand."""
    conns: list[WsConn] = []
    next_report = 2000
    for start in range(0, count, CHUNK):
        batch = min(CHUNK, count - start)
        conns += await asyncio.gather(*(open_ws(port, "/v1/ws", lambda _: None) for _ in range(batch)))
        if len(conns) >= next_report:
            print(f"  {len(conns)} idle clients open", flush=True)
            next_report += 2000
    return conns


async def active_latencies(port: int, duration_s: float) -> list[float]:
    """One client, one echo request at a time for `duration_s`: the latency of each (seconds)."""
    loop = asyncio.get_running_loop()
    reply: asyncio.Future[bytes] = loop.create_future()

    def on_text(payload: bytes) -> None:
        if not reply.done():
            reply.set_result(payload)

    conn = await open_ws(port, "/v1/endpoints/echo/ws", on_text)
    latencies: list[float] = []
    deadline = time.perf_counter() + duration_s
    seq = 0
    try:
        while time.perf_counter() < deadline:
            seq += 1
            reply = loop.create_future()
            sent = time.perf_counter()
            conn.send(b'{"type":"submit","id":%d,"data":{"n":%d},"progress":false}' % (seq, seq))
            answer = await asyncio.wait_for(reply, 30)
            latencies.append(time.perf_counter() - sent)
            assert answer.startswith(b'{"type":"completed","id":%d,' % seq), answer[:200]
    finally:
        conn.close()
        await conn.closed()
    return latencies


def connections_held(server: common.Server) -> int:
    """The daemon's servd_connections gauge (open websockets), from /metrics."""
    for line in fetch(server, "/metrics").decode().splitlines():
        if line.startswith("servd_connections "):
            return int(float(line.split()[1]))
    return -1


def summary(latencies: list[float]) -> dict[str, Any]:
    p50, p99 = common.percentile(latencies, 0.5), common.percentile(latencies, 0.99)
    return {
        "samples": len(latencies),
        "p50_ms": None if p50 is None else round(p50 * 1000, 3),
        "p99_ms": None if p99 is None else round(p99 * 1000, 3),
        "max_ms": round(max(latencies) * 1000, 3) if latencies else None,
    }


async def measure(server: common.Server, clients: int, duration_s: float) -> dict[str, Any]:
    baseline_rss = rss_kb(server.pid) / 1024
    before = summary(await active_latencies(server.port, duration_s))
    print(f"  no idle clients: rss {baseline_rss:.1f} MB, active p50 {before['p50_ms']} ms", flush=True)
    started = time.perf_counter()
    idle = await open_idle(server.port, clients)
    open_s = time.perf_counter() - started
    try:
        held_rss = rss_kb(server.pid) / 1024
        during = summary(await active_latencies(server.port, duration_s))
        after_rss = rss_kb(server.pid) / 1024
        held = connections_held(server)
        still_open = sum(1 for c in idle if not c.lost.done())
    finally:
        for conn in idle:
            conn.close()
        await asyncio.gather(*(c.closed() for c in idle))
    return {
        "clients": clients,
        "open_s": round(open_s, 2),
        "held_by_daemon": held,
        "still_open_at_client": still_open,
        "rss_mb": {"before": round(baseline_rss, 1), "held": round(held_rss, 1), "after_window": round(after_rss, 1)},
        "rss_kb_per_client": round((max(held_rss, after_rss) - baseline_rss) * 1024 / clients, 1) if clients else None,
        "active_before": before,
        "active_during": during,
    }


def run(*, clients: int = TARGET_CLIENTS, duration_s: float = 25.0, ping_s: float = 20.0) -> dict[str, Any]:
    info = common.machine_info()
    common.pin_self(common.CLIENT_CORE)
    limit = raise_open_files()
    common.print_machine(info)
    if clients + 200 > limit:
        print(f"  open-files limit {limit} here: measuring {limit - 200} clients, not {clients}")
        clients = max(0, limit - 200)
    print(f"idle: {clients} idle websocket clients; active echo client for {duration_s} s; pings every {ping_s} s")
    with common.workdir() as work, common.servers() as running:
        server = common.start_servd("idle", config(clients, ping_s), work)
        running.append(server)
        result_numbers = asyncio.run(measure(server, clients, duration_s))
    result: dict[str, Any] = {
        "benchmark": "idle",
        "machine": info | {"loadavg_at_end": common.loadavg()},
        "settings": {"clients": clients, "duration_s": duration_s, "ping_interval_s": ping_s},
        "results": result_numbers,
    }
    peak = max(result_numbers["rss_mb"]["held"], result_numbers["rss_mb"]["after_window"])
    result["summary"] = [
        common.summary_row(f"idle: daemon RSS MB with {clients} idle websockets", peak, TARGET_RSS_MB, higher=False),
        common.summary_row(
            f"idle: active echo p50 ms beside {clients} idle",
            result_numbers["active_during"]["p50_ms"],
            TARGET_P50_MS,
            higher=False,
        ),
    ]
    print_report(result)
    return result


def print_report(result: dict[str, Any]) -> None:
    r = result["results"]
    rss, before, during = r["rss_mb"], r["active_before"], r["active_during"]
    print()
    print(
        f"{r['clients']} idle clients opened in {r['open_s']} s; the daemon held {r['held_by_daemon']} "
        f"(the client saw {r['still_open_at_client']} still open at the end)"
    )
    rows = [
        ["none", rss["before"], before["samples"], before["p50_ms"], before["p99_ms"], before["max_ms"]],
        [
            r["clients"],
            max(rss["held"], rss["after_window"]),
            during["samples"],
            during["p50_ms"],
            during["p99_ms"],
            during["max_ms"],
        ],
    ]
    print(common.table(["idle clients", "daemon rss MB", "active samples", "p50 ms", "p99 ms", "max ms"], rows))
    print(f"RSS per idle client: {r['rss_kb_per_client']} KB")
    peak = max(rss["held"], rss["after_window"])
    target_met = r["clients"] >= TARGET_CLIENTS and r["held_by_daemon"] >= r["clients"]
    print(
        f"RSS {peak} MB -> {'PASS' if peak < TARGET_RSS_MB else 'FAIL'} (target < {TARGET_RSS_MB} MB); "
        f"p50 {during['p50_ms']} ms -> {'PASS' if (during['p50_ms'] or 1e9) < TARGET_P50_MS else 'FAIL'} "
        f"(target < {TARGET_P50_MS} ms); clients {r['held_by_daemon']} held -> "
        f"{'PASS' if target_met else 'below the 10,000 target'}"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="1,000 idle clients, 3 s windows: a smoke run")
    parser.add_argument("--clients", type=int, default=TARGET_CLIENTS, help="idle websocket clients")
    parser.add_argument(
        "--duration", type=float, help="seconds the active client measures (default: a ping interval + 5 s)"
    )
    parser.add_argument("--ping", type=float, default=20.0, help="server.ping_interval_s")


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        return run(clients=1000, duration_s=3.0, ping_s=args.ping)
    return run(clients=args.clients, duration_s=args.duration or args.ping + 5, ping_s=args.ping)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.idle", description=__doc__.splitlines()[0])
    add_arguments(parser)
    result = run_from_args(parser.parse_args(argv))
    print(f"written: {common.write_json('idle', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
