"""servd's own overhead: examples.echo:echo served by `servd run` against a bare Tornado echo server.

Both servers run as subprocesses pinned to one core, the load generator to another; each of
N clients keeps one request in flight (closed loop). servd is measured at log level warning
(no per-request log line) and info (one JSON line per request, to a file), in the same run,
with the servers taking turns at each client count so that drifting machine load hits all alike.

    python -m benchmarks.echo [--quick] [--clients 1,64,256] [--duration 5] [--rounds 1] [--concurrency 4,1]
                              [--compare NAME=PATH] [--profile servd.svg]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks import common

DATA = {"text": "hello servd", "n": 42}
TARGET_RATIO_AT_64 = 0.5  # concurrency 4
TARGET_RATIO_AT_64_C1 = 0.60  # concurrency 1, Gradio's default (issue #13)
TARGET_P50_MS_AT_1 = 1.0
BARE = "bare"


def bare_workload() -> common.Workload:
    """The same submit JSON as servd gets; the reply is the message itself."""
    servd = common.servd_workload("echo", DATA)

    def is_reply(seq: int, payload: bytes) -> bool:
        return payload == servd.message(seq)

    return common.Workload("/ws", servd.message, is_reply)


def endpoint_yaml(concurrency: int) -> str:
    return f"  echo:\n    entrypoint: examples.echo:echo\n    concurrency: {concurrency}\n"


def run(
    *,
    clients: tuple[int, ...] = (1, 64, 256),
    warmup_s: float = 1.0,
    duration_s: float = 5.0,
    rounds: int = 1,
    levels: tuple[str, ...] = ("warning", "info"),
    concurrencies: tuple[int, ...] = (4, 1),
    profile: Path | None = None,
    profile_clients: int = 64,
    compare: tuple[tuple[str, Path], ...] = (),
) -> dict[str, Any]:
    info = common.machine_info()
    common.pin_self(common.CLIENT_CORE)
    common.print_machine(info)
    servd_ws = common.servd_workload("echo", DATA)
    every: dict[str, dict[int, list[dict[str, Any]]]] = {}
    with common.workdir() as work, common.servers() as running:
        targets: list[tuple[str, common.Server, common.Workload]] = []
        for label, root in [("servd", common.ROOT), *compare]:
            for concurrency in concurrencies:
                for level in levels:
                    config = common.servd_config(endpoint_yaml(concurrency), log_level=level)
                    tag = level if concurrency == concurrencies[0] else f"{level}, c{concurrency}"
                    name = f"{label}[{tag}]"
                    server = common.start_servd(name, config, work, root=root)
                    running.append(server)
                    targets.append((server.name, server, servd_ws))
        bare = common.start_bare_echo()
        running.append(bare)
        targets.append((BARE, bare, bare_workload()))
        profiled = False
        for round_ in range(rounds):
            for n in clients:
                for name, server, workload in targets:
                    spy = None
                    if profile is not None and not profiled and n == profile_clients and server is targets[0][1]:
                        spy, profiled = _start_py_spy(server.pid, profile, warmup_s + duration_s), True
                    try:
                        m = asyncio.run(common.closed_loop(server, workload, n, warmup_s, duration_s))
                    finally:
                        if spy is not None:
                            _finish_py_spy(spy, profile)
                    every.setdefault(name, {}).setdefault(n, []).append(m.as_dict())
                    print(f"  round {round_ + 1} {name:>16} {common.progress_line(m)}", flush=True)
    info["loadavg_at_end"] = common.loadavg()
    chosen = {name: [common.median_by_rate(by_n[n]) for n in clients] for name, by_n in every.items()}
    result = {
        "benchmark": "echo",
        "machine": info,
        "settings": {
            "clients": list(clients),
            "warmup_s": warmup_s,
            "duration_s": duration_s,
            "rounds": rounds,
            "concurrency": list(concurrencies),
            "levels": list(levels),
            "compare": {label: str(root) for label, root in compare},
            "message": servd_ws.message(1).decode(),
        },
        "results": chosen,
        "all_rounds": {name: {str(n): ms for n, ms in by_n.items()} for name, by_n in every.items()},
    }
    result["summary"] = summarize(result)
    print_report(result)
    return result


def _start_py_spy(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    """py-spy record on the server, without pausing it (--nonblocking), on the load generator's core."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("  (py-spy not found: pip install py-spy; no profile taken)")
        return None
    kind = {".json": "speedscope", ".txt": "raw"}.get(out.suffix, "flamegraph")  # .svg: flame graph
    argv = [*common.pin_prefix(common.CLIENT_CORE), spy, "record", "--pid", str(pid), "--nonblocking"]
    argv += ["--duration", str(max(1, round(seconds))), "--rate", "250", "--format", kind, "-o", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _finish_py_spy(spy: subprocess.Popen[bytes], out: Path | None) -> None:
    try:
        _, err = spy.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        spy.terminate()
        _, err = spy.communicate(timeout=10)
    if spy.returncode != 0:
        print(f"  py-spy failed ({spy.returncode}): {err.decode(errors='replace').strip()[-500:]}")
    else:
        print(f"  profile written: {out}")


def _servd_names(result: dict[str, Any]) -> list[str]:
    return [name for name in result["results"] if name != BARE]


def summarize(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of (what, value, target, ok) for the one table `python -m benchmarks` prints."""
    results = result["results"]
    clients = result["settings"]["clients"]
    bare = dict(zip(clients, results.get(BARE, []), strict=False))
    level, concurrencies = result["settings"]["levels"][0], result["settings"]["concurrency"]
    main = f"servd[{level}]"
    targets = {main: TARGET_RATIO_AT_64 if concurrencies[0] == 4 else None}
    targets.update({f"servd[{level}, c{c}]": TARGET_RATIO_AT_64_C1 for c in concurrencies[1:] if c == 1})
    if concurrencies[0] == 1:
        targets[main] = TARGET_RATIO_AT_64_C1
    rows = []
    for name in _servd_names(result):
        for n, m in zip(clients, results[name], strict=True):
            b = bare.get(n)
            target = targets.get(name) if n == 64 else None
            value = common.ratio(m["rate"], b["rate"] if b else None)
            rows.append(common.summary_row(f"echo {name} / bare req/s, {n} clients", value, target))
        if 1 in clients:
            one = results[name][clients.index(1)]
            target = TARGET_P50_MS_AT_1 if name == main else None
            rows.append(common.summary_row(f"echo {name} p50 ms, 1 client", one["p50_ms"], target, higher=False))
    return rows


def print_report(result: dict[str, Any]) -> None:
    settings, results = result["settings"], result["results"]
    clients = settings["clients"]
    names = _servd_names(result)
    bare = results.get(BARE, [None] * len(clients))
    print()
    print(
        f"echo: closed loop, {settings['duration_s']} s per point after {settings['warmup_s']} s warm-up, "
        f"median of {settings['rounds']} round(s); echo endpoint concurrency {settings['concurrency'][0]} "
        "(', cN': concurrency N)"
    )
    main = names[0]
    headers = ["clients", f"{main} req/s", "bare req/s", "ratio", "servd p50 ms", "p99 ms", "bare p50 ms", "p99 ms"]
    rows = []
    for n, m, b in zip(clients, results[main], bare, strict=True):
        rows.append([n, m["rate"], b and b["rate"], common.ratio(m["rate"], b and b["rate"]), m["p50_ms"],
                     m["p99_ms"], b and b["p50_ms"], b and b["p99_ms"]])  # fmt: skip
    print(common.table(headers, rows))
    print()
    print("every server (ratio = req/s over bare's; cost ratio = bare's server CPU per request over this one's,")
    print("which other load on the machine disturbs less than req/s):")
    headers = ["clients", "server", "req/s", "ratio", "p50 ms", "p99 ms", "server cpu", "cpu us/req", "cost ratio",
               "switches/req", "client cpu"]  # fmt: skip
    rows = []
    for i, n in enumerate(clients):
        b = bare[i]
        for name in [*names, BARE]:
            m = results[name][i]
            rows.append([n, name, m["rate"], common.ratio(m["rate"], b and b["rate"]), m["p50_ms"], m["p99_ms"],
                         f"{m['server_cpu']:.0%}", m["server_us_per_request"],
                         common.ratio(b and b["server_us_per_request"], m["server_us_per_request"]),
                         m["switches_per_request"], f"{m['client_cpu']:.0%}"])  # fmt: skip
    print(common.table(headers, rows))
    machine = result["machine"]
    print(f"load average at start {machine['loadavg_at_start']}, at end {machine['loadavg_at_end']}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_load_arguments(parser)
    parser.add_argument("--levels", default="warning,info", help="servd log levels to measure")
    parser.add_argument(
        "--concurrency", default="4,1", help="concurrency of the echo endpoint; each value is a server (first: main)"
    )
    parser.add_argument("--profile", type=Path, help="py-spy record servd into this file (.svg, .json, .txt)")
    parser.add_argument("--profile-clients", type=int, default=64, help="client count to profile at")


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return run(
        **common.load_settings(args),
        levels=tuple(args.levels.split(",")),
        concurrencies=tuple(int(c) for c in args.concurrency.split(",")),
        profile=args.profile,
        profile_clients=args.profile_clients,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.echo", description=__doc__.splitlines()[0])
    add_arguments(parser)
    result = run_from_args(parser.parse_args(argv))
    print(f"written: {common.write_json('echo', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
