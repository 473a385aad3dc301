"""Command line: `servd run FILE`, `servd check FILE`, `servd schema`, `servd tune FILE`. The only place that exits."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from servd import __version__

if TYPE_CHECKING:
    from tornado.ioloop import PeriodicCallback

    from servd.config.schema import SpecError
    from servd.daemon.loading import Checked


SERVER_DEPENDENCIES = {"yaml", "jsonschema", "structlog", "watchdog", "prometheus_client", "orjson", "torch", "ruamel"}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _command(args)
    except ModuleNotFoundError as exc:
        if exc.name not in SERVER_DEPENDENCIES:
            raise
        print(
            f"servd {args.command}: needs the server's dependencies ({exc}); this looks like a client-only "
            "install (`servd bench` and `servd status` work there): pip install servd",
            file=sys.stderr,
        )
        return 1


def _command(args: argparse.Namespace) -> int:
    if args.command == "schema":
        from servd.config.schema import load_schema

        print(json.dumps(load_schema(), indent=2))
        return 0
    if args.command == "check":
        return _check(args.file)
    if args.command == "run":
        return _run(args.file, args.host, args.port)
    if args.command == "status":
        from servd.tools import status

        return status.main(args.url, args.token, args.timeout)
    if args.command == "bench":
        from servd.tools import bench

        return bench.main(args)
    if args.command == "tune":
        from servd.tools.tune import command as tune

        return tune.main(args)
    _parser().print_help()
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="servd", description="Serve Python and PyTorch models from one servd.yaml.")
    parser.add_argument("--version", action="version", version=f"servd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser("run", help="serve the endpoints of a config file (foreground; systemd Type=notify)")
    run.add_argument("file", help="path to servd.yaml")
    run.add_argument("--host", help="listen address (overrides server.host)")
    run.add_argument("--port", type=int, help="listen port (overrides server.port; 0 = any free port)")
    check = commands.add_parser(
        "check", help="check a config file fully (schema, entrypoints, devices); exit 1 on errors"
    )
    check.add_argument("file", help="path to servd.yaml")
    commands.add_parser("schema", help="print the JSON Schema of servd.yaml")
    status = commands.add_parser(
        "status", help="summarise a running daemon: endpoints' queues, workers, latencies, ETA; last reload"
    )
    status.add_argument("url", nargs="?", help="the daemon's base URL (default http://127.0.0.1:8700)")
    status.add_argument("--token", help="bearer token when server.tokens_file is set (default: $SERVD_TOKEN)")
    status.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for an answer (default 10)")
    from servd.tools import bench

    bench.add_arguments(commands.add_parser("bench", help="closed-loop load against a running servd; latency, errors"))
    from servd.tools.tune import command as tune

    tune.add_arguments(commands.add_parser("tune", help="find the best concurrency and batching of an endpoint"))
    return parser


def _check(file: str) -> int:
    from servd.config.schema import SpecError
    from servd.daemon.loading import cluster_warnings, load_checked

    try:
        spec = load_checked(file).spec
    except SpecError as exc:
        _print_problems(exc)
        return 1
    for warning in cluster_warnings(spec):
        print(warning, file=sys.stderr)
    print(f"servd: {file}: ok ({len(spec.endpoints)} endpoints: {', '.join(spec.endpoints)})")
    return 0


def _print_problems(exc: SpecError) -> None:
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    count = len(exc.problems)
    print(f"servd: {count} problem{'s' if count != 1 else ''} found", file=sys.stderr)


def _run(file: str, host: str | None, port: int | None) -> int:
    from servd.config.schema import SpecError
    from servd.daemon.loading import load_checked

    try:
        checked = load_checked(file)
    except SpecError as exc:
        _print_problems(exc)
        return 1
    overrides = {key: value for key, value in (("host", host), ("port", port)) if value is not None}
    loop = asyncio.new_event_loop()
    unfinished: list[str] = []
    try:
        code = loop.run_until_complete(_serve(checked, overrides, unfinished))
    except OSError as exc:
        print(f"servd: cannot start: {exc.strerror or exc}", file=sys.stderr)
        code = 1
    return _exit(code, unfinished)


def _exit(code: int, unfinished: list[str]) -> int:
    """Calls still running after the drain can't be interrupted; Python would wait for their threads
    at exit (and systemd would SIGKILL us at TimeoutStopSec), so leave without them, naming them."""
    others = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    deadline = time.monotonic() + 1.0
    for thread in others:  # idle executor threads exit within moments of their pool's shutdown
        thread.join(max(0.0, deadline - time.monotonic()))
    if not unfinished and not any(t.is_alive() for t in others):
        return code
    if unfinished:
        print(f"servd: exiting with {len(unfinished)} call(s) still running past the drain: {'; '.join(unfinished)}",
              file=sys.stderr)  # fmt: skip
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def _serve(checked: Checked, overrides: dict[str, Any], unfinished: list[str]) -> int:
    from servd import service
    from servd.daemon import gcpolicy

    running = service.build(checked, server_overrides=overrides)
    daemon = running.daemon
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_stop_signal(signum: int) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            os._exit(130)  # a second Ctrl-C: the operator wants out now
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_stop_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)
    try:
        await service.start(running)
    except OSError:
        await running.stop()
        raise
    except Exception as exc:  # noqa: BLE001 - report any failed model load and exit non-zero
        daemon.log.error("start failed", error=f"{type(exc).__name__}: {exc}")
        await running.stop()
        return 1
    gcpolicy.freeze_startup()
    watchdog = _start_watchdog()
    await stop.wait()
    if watchdog is not None:
        watchdog.stop()
    await running.stop()
    unfinished += daemon.unfinished
    await _shutdown_default_executor(loop)
    return 0


async def _shutdown_default_executor(loop: asyncio.AbstractEventLoop) -> None:
    """Model loads and close() calls ran on asyncio's default executor: let its idle threads go."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(loop.shutdown_default_executor(), 1.0)


def _start_watchdog() -> PeriodicCallback | None:
    """WATCHDOG=1 from the event loop itself, so a stuck loop gets the service restarted."""
    from tornado.ioloop import PeriodicCallback

    from servd.daemon import systemd

    interval = systemd.watchdog_interval_s()
    if interval is None:
        return None

    def ping() -> None:
        systemd.watchdog()

    callback = PeriodicCallback(ping, interval * 1000)
    callback.start()
    return callback
