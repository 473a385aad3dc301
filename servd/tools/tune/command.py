"""`servd tune FILE --endpoint NAME`: find the concurrency and batching that serve a model best.

servd retunes live, so a setting can be tried in seconds on the real daemon and hardware: save
the config, wait for /v1/status to show the reload applied, put closed-loop load on it with
`servd bench`'s engine (warm-up, then measure), read what servd measured, move on. What is tried
and when to stop is servd.tools.tune.search; the daemon and the file, servd.tools.tune.target; the loop
that joins them, servd.tools.tune.session; what is printed, servd.tools.tune.report and servd.tools.tune.plot.

Whatever happens (an error, Ctrl-C, SIGTERM) the file is left as it was found, unless --write
saved the choice, and a daemon the tuner started is stopped. Only the standard library is
imported at the top: `servd bench` and `servd status` build the same parser on client-only
installs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from servd.tools.tune.report import Report
    from servd.tools.tune.session import Options, Plan

KNOB_NAMES = {"max_size": "batch.max_size", "max_delay_ms": "batch.max_delay_ms", "concurrency": "concurrency",
              "instances": "the instance count (a device list)"}  # fmt: skip
EXIT_STATUS = (
    "Exit status: 0 when a setting was chosen (and, with --write, saved); 1 when the tune could not run or "
    "found nothing (the file does not check, the endpoint fails the sample or every request, a --p99-ms that "
    "no setting met, a daemon that does not start); 2 for bad arguments; 130 when interrupted. The file is "
    "always left as it was found, unless --write saved the choice."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXIT_STATUS
    parser.add_argument("file", type=Path, help="the servd.yaml to tune (and with --write, to save into)")
    parser.add_argument("--endpoint", required=True, help="the endpoint to tune")
    payload = parser.add_mutually_exclusive_group(required=True)
    payload.add_argument("--data", help="one request's data as a JSON literal")
    payload.add_argument("--data-file", type=Path, help="one request's data from a JSON file")
    goal = parser.add_mutually_exclusive_group(required=True)
    goal.add_argument("--p99-ms", type=float, help="goal: the most throughput whose p99 (at the client) is under this")
    goal.add_argument("--max-throughput", action="store_true", help="goal: the most throughput, whatever the latency")
    parser.add_argument("--clients", help="load: clients per point, or a list (1,16,64); default: per setting, "
                        "rising from its capacity until throughput stops growing")  # fmt: skip
    parser.add_argument("--duration", type=float, default=1.5, help="seconds measured per point (default 1.5)")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of unmeasured load first (default 0.5)")
    parser.add_argument("--url", help="tune this running daemon (through FILE, which it must serve) instead of "
                        "starting one")  # fmt: skip
    parser.add_argument("--token", default=os.environ.get("SERVD_TOKEN"), help="bearer token (default $SERVD_TOKEN)")
    parser.add_argument("--transport", choices=("ws", "http"), default="ws", help="websocket (default) or HTTP POST")
    parser.add_argument("--knobs", default=",".join(KNOB_NAMES), help="what to tune: some of "
                        "max_size,max_delay_ms,concurrency,instances (default: all that apply)")  # fmt: skip
    parser.add_argument("--max-batch", type=int, default=256, help="largest batch.max_size tried (default 256)")
    parser.add_argument("--max-concurrency", type=int, default=64, help="largest concurrency tried (default 64)")
    parser.add_argument("--max-clients", type=int, default=256, help="most clients at once (default 256)")
    parser.add_argument("--max-points", type=int, default=48, help="most points measured in all (default 48)")
    parser.add_argument("--write", action="store_true", help="save the chosen values into FILE (checked, atomic, "
                        "comments and order kept); without it, print the YAML to paste")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--plot", type=Path, help="write throughput against p99 of every point to this .svg file")
    parser.add_argument("--no-progress", action="store_true", help="no live progress line on stderr")


def options_from(args: argparse.Namespace) -> Options:
    """Checked Options; ValueError naming the bad argument."""
    from servd.tools.tune.session import Options

    if args.p99_ms is not None and not args.p99_ms > 0:
        raise ValueError(f"--p99-ms must be a number of milliseconds > 0, got {args.p99_ms}")
    if not args.duration > 0 or args.warmup < 0:
        raise ValueError("--duration must be positive and --warmup not negative")
    if min(args.max_batch, args.max_concurrency, args.max_clients) < 1 or args.max_points < 3:
        raise ValueError("--max-batch, --max-concurrency and --max-clients must be at least 1, --max-points at least 3")
    knobs = frozenset(k.strip() for k in args.knobs.split(",") if k.strip())
    if not knobs or not knobs <= set(KNOB_NAMES):
        raise ValueError(f"--knobs takes some of {','.join(KNOB_NAMES)}, got {args.knobs!r}")
    if args.plot is not None and args.plot.suffix.lower() != ".svg":
        raise ValueError(f"--plot writes SVG: give a file ending in .svg, got {str(args.plot)!r}")
    if not args.file.is_file():
        raise ValueError(f"{args.file}: no such file")
    return Options(
        file=args.file, endpoint=args.endpoint, data_json=_data_json(args), p99_s=_p99(args.p99_ms),
        clients=_clients(args.clients, args.max_clients), duration_s=args.duration, warmup_s=args.warmup,
        url=args.url, token=args.token or None, transport=args.transport, knobs=knobs, max_batch=args.max_batch,
        max_concurrency=args.max_concurrency, max_clients=args.max_clients, max_points=args.max_points,
        write=args.write, json=args.json, plot=args.plot, progress=not args.no_progress and sys.stderr.isatty(),
    )  # fmt: skip


def _p99(ms: float | None) -> float | None:
    return None if ms is None else ms / 1e3


def _data_json(args: argparse.Namespace) -> str:
    text = args.data_file.read_text("utf-8") if args.data_file else args.data
    try:
        return json.dumps(json.loads(text), separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"{'--data-file' if args.data_file else '--data'} is not valid JSON: {exc}") from None


def _clients(text: str | None, most: int) -> tuple[int, ...]:
    if text is None:
        return ()
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        levels = ()
    if not levels or not all(1 <= n <= most for n in levels):
        raise ValueError(f"--clients takes numbers from 1 to --max-clients ({most}) separated by commas, got {text!r}")
    return levels


def main(args: argparse.Namespace) -> int:
    """`servd tune` from parsed arguments; the exit status (see EXIT_STATUS)."""
    try:
        options = options_from(args)
    except (ValueError, OSError) as exc:
        print(f"servd tune: {exc}", file=sys.stderr)
        return 2
    from servd.tools.tune.target import TuneError

    try:
        with _sigterm_as_interrupt():
            return _tune(options)
    except TuneError as exc:
        print(f"servd tune: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"servd tune: interrupted; {options.file} is as it was", file=sys.stderr)
        return 130


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the tune as Ctrl-C does: the file restored, the started daemon stopped."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _tune(options: Options) -> int:
    from servd.tools.tune import session as tune_session

    plan = tune_session.prepare(options)
    report, written = tune_session.run(options, plan)
    return _print(options, plan, report, written)


def _print(options: Options, plan: Plan, report: Report, written: bool) -> int:
    from servd.tools.tune import plot as tune_plot
    from servd.tools.tune import report as tune_report

    if options.plot is not None:
        options.plot.write_text(tune_plot.svg(report), "utf-8")
    failure = _failure(report)
    if options.json:
        print(json.dumps(tune_report.as_json(report, written), indent=2))
    else:
        print(_text(options, plan, report, written, failure))
    if failure:
        print(f"servd tune: {failure}", file=sys.stderr)
        return 1
    return 0


def _text(options: Options, plan: Plan, report: Report, written: bool, failure: str | None) -> str:
    from servd.tools.tune import report as tune_report

    title = (f"servd tune {options.file} endpoint={options.endpoint} goal: {tune_report.goal_text(report.goal)}; "
             f"{len(report.search.points)} points of {options.warmup_s:g}+{options.duration_s:g} s "
             f"in {report.elapsed_s:.0f} s")  # fmt: skip
    parts = [title, "", tune_report.table(report), "", *tune_report.summary(report)]
    chosen = report.chosen_point
    if failure is None and chosen is not None:
        values = tune_report.tuned_values(chosen.setting, report.devices)
        if written:
            parts += ["", f"wrote {options.file}: {tune_report.setting_text(chosen.setting, report.devices)}"]
        elif chosen.setting == report.search.start:
            parts += ["", f"{options.file} already holds the best setting found; nothing to change"]
        else:
            parts += ["", "paste into the file (or run again with --write):", ""]
            parts.append(tune_report.fragment(plan.name, values))
    if options.plot is not None:
        parts += ["", f"plot: {options.plot}"]
    return "\n".join(parts).rstrip("\n")


def _failure(report: Report) -> str | None:
    """Why no setting was chosen, or None."""
    from servd.tools.tune import report as tune_report

    if report.chosen_point is not None:
        return None
    points = report.search.points
    done = [p for p in points if p.measure.completed and not p.measure.error_count and not p.oom]
    if report.goal.p99_s is not None and done:
        best = min(done, key=lambda p: p.measure.p99_s or float("inf"))
        where = f"point {best.index}, {tune_report.clients_text(best.trial.clients)}"
        return (f"no setting met p99 <= {report.goal.p99_s * 1e3:g} ms: the lowest p99 measured was "
                f"{(best.measure.p99_s or 0) * 1e3:.2f} ms ({where}); nothing written")  # fmt: skip
    errors: dict[str, int] = {}
    for p in points:
        for code, count in p.measure.errors.items():
            errors[code] = errors.get(code, 0) + count
    seen = ", ".join(f"{code} {count}" for code, count in sorted(errors.items())) or "none completed"
    return f"no setting served the load without errors ({seen}); nothing written"
