"""`servd bench`'s arguments, their checks, and the run from them to an exit status.

Shared by the `servd bench` subcommand and `python -m servd.tools.bench`; only the standard
library and the client are imported, so `servd bench --help` works on a client-only install.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from servd.client._http import Target
from servd.client._tensors import as_json
from servd.client.errors import ServdError
from servd.tools.bench.level import run
from servd.tools.bench.options import Options
from servd.tools.bench.report import failures, summary_text, table_text

MAX_CLIENTS = 10_000
DESCRIPTION = "`servd bench URL --endpoint NAME`: closed-loop load against a running servd, and what it saw."
EXIT_STATUS = (
    "Exit status: 0 when every level completed at least one request and lost none; 1 when a level "
    "lost a request or completed none (every request failed: a refused token, a model that always "
    "raises), when the server has no such endpoint (checked before any load), or when the server "
    "can't be reached; 2 for bad arguments. Errors beside completions (queue_full, timeout, ...) are "
    "the server's answer to the load and leave it 0; read them from the output (--json: levels[].errors)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench's options and its exit-status rule."""
    parser.epilog = EXIT_STATUS
    parser.add_argument("url", help="the server, e.g. ws://127.0.0.1:8700 (http:// works too)")
    parser.add_argument("--endpoint", required=True, help="endpoint to load")
    parser.add_argument("--clients", default="1", help="concurrent clients; a list (1,16,64,256) sweeps")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per level (default 10)")
    parser.add_argument("--requests", type=int, default=100_000, help="at most this many per level (default 100000)")
    payload = parser.add_mutually_exclusive_group()
    payload.add_argument("--data", default="null", help="request data as a JSON literal (default null)")
    payload.add_argument(
        "--data-file", type=Path, help="request data from a JSON file, or tensors from a .npy or .npz file"
    )
    parser.add_argument("--tensor", default="x", help="with --data-file x.npy: the input's name (default x)")
    parser.add_argument("--transport", choices=("ws", "http"), default="ws", help="websocket (default) or HTTP POST")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured load first (default 1)")
    parser.add_argument("--token", default=os.environ.get("SERVD_TOKEN"), help="bearer token (default $SERVD_TOKEN)")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to wait for answers at the end (default 30)")
    levels = parser.add_mutually_exclusive_group()
    levels.add_argument("--priority", type=int, help="send every request at this priority level (1 = highest)")
    levels.add_argument(
        "--priority-mix",
        metavar="LEVEL:WEIGHT,...",
        help="draw each request's level with these weights, e.g. 1:0.2,3:0.8 (a fifth at level 1); "
        "results are split by level",
    )
    parser.add_argument("--deadline-s", type=float, help="each request's own deadline in seconds (deadline_s)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no live progress line on stderr")


def options_from(args: argparse.Namespace) -> Options:
    """Checked Options from parsed arguments; raises ValueError naming the bad one."""
    try:
        clients = tuple(int(part) for part in args.clients.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--clients must be integers separated by commas, got {args.clients!r}") from None
    if not clients or not all(1 <= n <= MAX_CLIENTS for n in clients):
        raise ValueError(f"--clients must be between 1 and {MAX_CLIENTS}, got {args.clients!r}")
    if args.duration <= 0 or args.requests < 1 or args.warmup < 0 or args.drain < 0:
        raise ValueError("--duration and --requests must be positive, --warmup and --drain not negative")
    arrays = _arrays(args.data_file, args.tensor) if args.data_file else None
    text = args.data_file.read_text("utf-8") if args.data_file and arrays is None else args.data
    try:
        data = json.loads(text) if arrays is None else as_json(arrays)
        data_json = json.dumps(data, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"{'--data-file' if args.data_file else '--data'} is not valid JSON: {exc}") from None
    Target.parse(args.url)
    return Options(
        url=args.url, endpoint=args.endpoint, clients=clients, duration_s=args.duration, requests=args.requests,
        data_json=data_json, transport=args.transport, warmup_s=args.warmup, token=args.token or None,
        drain_s=args.drain, progress=not args.no_progress and sys.stderr.isatty(),
        priorities=_priorities(args.priority, args.priority_mix), deadline_s=_deadline(args.deadline_s),
        arrays=arrays,
    )  # fmt: skip


def _arrays(path: Path, name: str) -> dict[str, Any] | None:
    """The arrays of a .npy (one, sent as input `name`) or .npz file (each by its name); None otherwise."""
    if path.suffix not in (".npy", ".npz"):
        return None
    try:
        import numpy as np
    except ImportError:
        raise ValueError("--data-file: reading .npy and .npz files needs numpy (pip install numpy)") from None
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"--data-file {path}: {exc}") from None
    if path.suffix == ".npy":
        return {name: loaded}
    with loaded:
        return {key: loaded[key] for key in loaded.files}


def _priorities(priority: int | None, mix: str | None) -> tuple[tuple[int, float], ...]:
    if priority is not None:
        if priority < 0:
            raise ValueError(f"--priority must be 0 (the default level) or more, got {priority}")
        return ((priority, 1.0),)
    return () if mix is None else parse_priority_mix(mix)


def parse_priority_mix(text: str) -> tuple[tuple[int, float], ...]:
    """ "1:0.2,3:0.8" -> ((1, 0.2), (3, 0.8)); ValueError naming the syntax. Weights needn't add
    up to 1 (1:1,3:4 is the same mix); a level may appear once; 0 is the endpoint's default."""
    mix: dict[int, float] = {}
    for part in text.split(","):
        level, _, weight = part.strip().partition(":")
        try:
            pair = int(level), float(weight)
        except ValueError:
            pair = (-1, 0.0)
        if pair[0] < 0 or not math.isfinite(pair[1]) or pair[1] <= 0 or pair[0] in mix:
            raise ValueError(
                f"--priority-mix must be LEVEL:WEIGHT pairs separated by commas, each level once, levels >= 0 "
                f"and weights > 0 (e.g. 1:0.2,3:0.8), got {text!r}"
            )
        mix[pair[0]] = pair[1]
    return tuple(mix.items())


def _deadline(deadline_s: float | None) -> float | None:
    if deadline_s is not None and not (math.isfinite(deadline_s) and deadline_s > 0):
        raise ValueError(f"--deadline-s must be a number of seconds > 0, got {deadline_s}")
    return deadline_s


def main(args: argparse.Namespace) -> int:
    """Run the bench from parsed arguments: 0; 1 when a level failed (see `report.failures`), the
    endpoint doesn't exist or the server is unreachable; 2 for bad arguments."""
    try:
        options = options_from(args)
    except (ValueError, OSError) as exc:
        print(f"servd bench: {exc}", file=sys.stderr)
        return 2
    try:
        levels = asyncio.run(run(options))
    except ServdError as exc:
        print(f"servd bench: {exc}", file=sys.stderr)
        return 1
    if args.json:
        header = {"url": options.url, "endpoint": options.endpoint, "transport": options.transport}
        run_info = {"duration_s": options.duration_s, "warmup_s": options.warmup_s, "requests": options.requests}
        scheduling = {"priorities": dict(options.priorities) or None, "deadline_s": options.deadline_s}
        print(json.dumps({**header, **run_info, **scheduling, "levels": levels}, indent=2))
    elif len(levels) == 1:
        print(summary_text(options.title, options.warmup_s, levels[0]))
    else:
        print(table_text(options.title, levels))
    problems = failures(levels)
    for problem in problems:
        print(f"servd bench: {problem}", file=sys.stderr)
    return 1 if problems else 0


def cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="servd bench", description=DESCRIPTION)
    add_arguments(parser)
    return main(parser.parse_args(argv))
