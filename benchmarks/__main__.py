"""`python -m benchmarks [NAME|all] [--quick]`: run benchmarks, then one table of ratios and targets.

Each benchmark also prints its own tables and writes benchmarks/results/NAME.json; the summary
(ratios against the baselines, with the targets the issues set) goes to results/summary.json.
A benchmark module joins `all` by providing add_arguments(parser) and run_from_args(args),
returning a result whose "summary" is a list of common.summary_row(...) dicts.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from benchmarks import common

BENCHMARKS = ("echo", "mlp", "v2", "reload", "soak", "idle", "scheduling", "console_cost", "ray_dispatch")


def available() -> list[str]:
    names = []
    for name in BENCHMARKS:
        try:
            module = importlib.import_module(f"benchmarks.{name}")
        except ImportError:
            continue
        if hasattr(module, "add_arguments") and hasattr(module, "run_from_args"):
            names.append(name)
    return names


def run_one(name: str, quick: bool) -> dict[str, Any]:
    module = importlib.import_module(f"benchmarks.{name}")
    parser = argparse.ArgumentParser(prog=f"benchmarks.{name}")
    module.add_arguments(parser)
    args = parser.parse_args(["--quick"] if quick else [])
    print(f"\n=== {name}{' (quick)' if quick else ''} ===", flush=True)
    result: dict[str, Any] = module.run_from_args(args)
    print(f"written: {common.write_json(name, result)}")
    return result


def print_summary(rows: list[dict[str, Any]]) -> None:
    print("\n=== summary ===")
    table = [
        [row["what"], row["value"], row["target"] or "", {True: "ok", False: "MISSED", None: ""}[row["ok"]]]
        for row in rows
    ]
    print(common.table(["measure", "value", "target", ""], table))


def main(argv: list[str] | None = None) -> int:
    names = available()
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("which", nargs="?", default="all", choices=[*names, "all"], help="which benchmark to run")
    parser.add_argument("--quick", action="store_true", help="short windows: a smoke run, not a measurement")
    args = parser.parse_args(argv)
    chosen = names if args.which == "all" else [args.which]
    rows: list[dict[str, Any]] = []
    failed: list[str] = []
    for name in chosen:
        try:
            rows += run_one(name, args.quick).get("summary", [])
        except Exception as exc:  # noqa: BLE001 - report it and go on with the other benchmarks
            print(f"benchmark {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed.append(name)
    print_summary(rows)
    common.write_json("summary", {"quick": args.quick, "benchmarks": chosen, "failed": failed, "rows": rows})
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
