"""What open web consoles cost: servd's CPU at the echo benchmark's 64 clients, with and without
20 consoles reading the push channel (GET /v1/events).

One `servd run` (examples.echo:echo, concurrency 4, log level warning, as benchmarks/echo.py
serves it), pinned to core 0; the closed loop of websocket clients from benchmarks.common on
core 1. Rounds alternate: without consoles, then with N event streams open (raw sockets that
the load generator reads and throws away, as a browser tab would read them), so that drifting
machine load hits both alike. The measure is server CPU per completed request, which other work
on the machine disturbs less than req/s; both are reported, and the median round's ratio. As
that still moves by several percent on a shared machine, the push channel's own cost is also
measured with no load at all: servd's CPU with and without the consoles over 10 s, as a share of
what servd used under load.

    python -m benchmarks.console_cost [--quick] [--consoles 20] [--clients 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.echo import DATA, endpoint_yaml

TARGET_ADDED_CPU = 0.05  # issue 15: 20 consoles add less than 5% to servd's CPU at 64 clients


async def _read_events(port: int, counts: list[int]) -> None:
    """One console: GET /v1/events, then read (and drop) whatever comes, counting status events."""
    reader, writer = await asyncio.open_connection(common.HOST, port)
    writer.write(f"GET /v1/events HTTP/1.1\r\nHost: {common.HOST}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode())
    try:
        while chunk := await reader.read(65536):
            counts[0] += chunk.count(b"event: status")
    finally:
        writer.close()


async def _measure(
    server: common.Server, consoles: int, clients: int, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    counts = [0]
    readers = [asyncio.ensure_future(_read_events(server.port, counts)) for _ in range(consoles)]
    try:
        workload = common.servd_workload("echo", DATA)
        measured = await common.closed_loop(server, workload, clients, warmup_s, duration_s)
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    return {**measured.as_dict(), "consoles": consoles, "status_events_read": counts[0]}


async def _idle_cpu(server: common.Server, consoles: int, seconds: float) -> float:
    """Server CPU seconds per second with `consoles` streams open and no other load: what the push
    channel itself costs, free of the noise a loaded, shared machine puts on the loaded rounds."""
    counts = [0]
    readers = [asyncio.ensure_future(_read_events(server.port, counts)) for _ in range(consoles)]
    try:
        await asyncio.sleep(1.0)  # connected, past the hello
        before = _cpu_ns(server.pid)
        await asyncio.sleep(seconds)
        return (_cpu_ns(server.pid) - before) / 1e9 / seconds
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


def _cpu_ns(pid: int) -> int:
    """CPU time of all a process's threads in nanoseconds (/proc/PID/task/*/schedstat): /proc/PID/stat
    counts 10 ms ticks, too coarse for a cost of about a millisecond a second."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


def run(
    *, consoles: int = 20, clients: int = 64, rounds: int = 3, warmup_s: float = 1.0, duration_s: float = 5.0
) -> dict[str, Any]:
    info = common.machine_info()
    common.pin_self(common.CLIENT_CORE)
    common.print_machine(info)
    without: list[dict[str, Any]] = []
    with_consoles: list[dict[str, Any]] = []
    with common.workdir() as work, common.servers() as running:
        server = common.start_servd("servd", common.servd_config(endpoint_yaml(4)), work)
        running.append(server)
        for round_ in range(rounds):
            for n, into in ((0, without), (consoles, with_consoles)):
                m = asyncio.run(_measure(server, n, clients, warmup_s, duration_s))
                into.append(m)
                print(f"  round {round_ + 1} consoles={n:<3} {m['rate']:9.0f}/s  server cpu {m['server_cpu']:.0%}"
                      f"  {common.fmt(m['server_us_per_request'], 1)} us/req  status events read "
                      f"{m['status_events_read']}", flush=True)  # fmt: skip
        idle_s = 2.0 if duration_s < 5 else 10.0
        idle = {n: asyncio.run(_idle_cpu(server, n, idle_s)) for n in (0, consoles)}
    info["loadavg_at_end"] = common.loadavg()
    feed_share = idle[consoles] - idle[0]  # of one core
    loaded_share = statistics.median(m["server_cpu"] for m in without)
    ratios = [
        common.ratio(b["server_us_per_request"], a["server_us_per_request"])
        for a, b in zip(without, with_consoles, strict=True)
    ]
    added = statistics.median(r for r in ratios if r is not None) - 1
    result = {
        "benchmark": "console_cost",
        "machine": info,
        "settings": {
            "consoles": consoles,
            "clients": clients,
            "rounds": rounds,
            "warmup_s": warmup_s,
            "duration_s": duration_s,
        },
        "rounds": {"without": without, "with": with_consoles},
        "added_cpu_per_request": [None if r is None else round(r - 1, 4) for r in ratios],
        "added_cpu_median": round(added, 4),
        "idle_server_cpu": {str(n): round(v, 5) for n, v in idle.items()},
        "feed_cpu_share_of_loaded": round(feed_share / loaded_share, 4) if loaded_share else None,
        "rate_ratio_median": round(
            statistics.median(b["rate"] / a["rate"] for a, b in zip(without, with_consoles, strict=True)), 4
        ),
    }
    result["summary"] = [
        common.summary_row(
            f"console: server CPU added per request by {consoles} consoles at {clients} clients",
            result["added_cpu_median"],
            TARGET_ADDED_CPU,
            higher=False,
        )
    ]
    print(
        f"\n{consoles} consoles on /v1/events at {clients} clients: server CPU per request "
        f"{added:+.1%} (median of {rounds} rounds: {', '.join(f'{r - 1:+.1%}' for r in ratios if r is not None)}); "
        f"req/s ratio {result['rate_ratio_median']}\n"
        f"idle, no load: {consoles} consoles cost {feed_share * 1000:.3f} ms of CPU a second "
        f"({idle[0] * 1000:.2f} -> {idle[consoles] * 1000:.2f}), {result['feed_cpu_share_of_loaded']:.2%} of what "
        f"servd used at {clients} clients ({loaded_share:.0%} of a core)"
    )
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="short windows (0.3 s + 1.5 s), one round")
    parser.add_argument("--consoles", type=int, default=20, help="open /v1/events streams in the measured rounds")
    parser.add_argument("--clients", type=int, default=64, help="closed-loop websocket clients")
    parser.add_argument("--rounds", type=int, default=3, help="pairs of rounds (without, with); the median is reported")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per round")


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.quick:
        return run(consoles=args.consoles, clients=args.clients, rounds=1, warmup_s=0.3, duration_s=1.5)
    return run(consoles=args.consoles, clients=args.clients, rounds=args.rounds, duration_s=args.duration)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.console_cost", description=__doc__.splitlines()[0])
    add_arguments(parser)
    result = run_from_args(parser.parse_args(argv))
    print(f"written: {common.write_json('console_cost', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
