"""What `servd bench` prints: one level in full, a sweep as a table, the per-priority split, and why a run failed.

Pure functions of the JSON-ready level summaries that `servd.tools.bench.recorder` builds (the same dicts
`--json` prints), so what a person reads and what a machine reads can't disagree.
"""

from __future__ import annotations

from typing import Any

PRIORITY_HEAD = (
    f"{'priority':>8} {'sent':>7} {'done':>7} {'p50 ms':>8} {'p99 ms':>8} {'wait p50':>8} {'wait p99':>8}  errors"
)


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.2f}"


def errors_text(errors: dict[str, int]) -> str:
    return ", ".join(f"{code} {count}" for code, count in errors.items()) or "none"


def batch_mean(batches: dict[str, int]) -> str:
    count = sum(batches.values())
    return f"{sum(int(size) * n for size, n in batches.items()) / count:.2f}" if count else "-"


def priority_label(level: str) -> str:
    """ "0" (no level asked: the endpoint's default) reads as "default"."""
    return "default" if level == "0" else level


def priority_rows(level: dict[str, Any]) -> list[str]:
    """One row per priority level the run sent at: counts, latency and wait p50/p99, errors by code."""
    rows = []
    for name, part in level.get("by_priority", {}).items():
        total, queue = part["latency_s"]["total"], part["latency_s"]["queue"]
        rows.append(
            f"{priority_label(name):>8} {part['sent']:>7} {part['completed']:>7} {ms(total['p50']):>8} "
            f"{ms(total['p99']):>8} {ms(queue['p50']):>8} {ms(queue['p99']):>8}  {errors_text(part['errors'])}"
        )
    return rows


def summary_text(title: str, warmup_s: float, level: dict[str, Any]) -> str:
    """One level in full: counts, throughput, latency split, batch histogram, errors by code, and
    the split by priority when the run sent priorities."""
    lat = level["latency_s"]
    lines = [
        f"{title} clients={level['clients']} warm-up={warmup_s}s",
        f"requests     {level['sent']} sent, {level['completed']} completed, "
        f"{sum(level['errors'].values())} errors, {level['lost']} lost",
        f"throughput   {level['throughput_rps']:.1f} req/s over {level['elapsed_s']:.2f} s",
        f"latency ms   {'p50':>9} {'p90':>9} {'p99':>9} {'max':>9}",
    ]
    for label, key in (("total", "total"), ("queue wait", "queue"), ("run", "run")):
        row = lat[key]
        lines.append(f"  {label:<11}{ms(row['p50']):>9} {ms(row['p90']):>9} {ms(row['p99']):>9} {ms(row['max']):>9}")
    done = max(1, level["completed"])
    batches = "  ".join(f"{size}: {n} ({100 * n / done:.0f}%)" for size, n in level["batch_sizes"].items())
    lines.append(f"batch sizes  {batches or '-'}")
    lines.append(f"errors       {errors_text(level['errors'])}")
    if level.get("by_priority"):
        lines += ["by priority", PRIORITY_HEAD, *priority_rows(level)]
    return "\n".join(lines)


def table_text(title: str, levels: list[dict[str, Any]]) -> str:
    """A sweep: one row per number of clients; then errors by code, and the split by priority."""
    head = (
        f"{'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'wait p50':>8} {'run p50':>8} {'batch':>6} {'errors':>7} {'lost':>5}"
    )
    rows = [title, head]
    for level in levels:
        total, lat = level["latency_s"]["total"], level["latency_s"]
        rows.append(
            f"{level['clients']:>7} {level['throughput_rps']:>9.1f} {ms(total['p50']):>8} {ms(total['p90']):>8} "
            f"{ms(total['p99']):>8} {ms(total['max']):>8} {ms(lat['queue']['p50']):>8} "
            f"{ms(lat['run']['p50']):>8} {batch_mean(level['batch_sizes']):>6} "
            f"{sum(level['errors'].values()):>7} {level['lost']:>5}"
        )
    errors = [f"  {level['clients']} clients: {errors_text(level['errors'])}" for level in levels if level["errors"]]
    if errors:
        rows += ["errors by code:", *errors]
    if any(level.get("by_priority") for level in levels):
        rows += ["by priority:", f"{'clients':>7} {PRIORITY_HEAD}"]
        rows += [f"{level['clients']:>7} {row}" for level in levels for row in priority_rows(level)]
    return "\n".join(rows)


def failures(levels: list[dict[str, Any]]) -> list[str]:
    """Why the run failed, one line per level that failed; none when it passed.

    A level fails when a request was lost or when no measured request completed: then the
    numbers measure nothing (a wrong endpoint, a token refused, a model that always raises).
    Some errors among completions do not fail the run: queue_full, timeout and the like are
    how a server answers overload, which is what a load test is there to see.
    """
    problems = []
    for level in levels:
        where = f"at {level['clients']} client{'s' if level['clients'] != 1 else ''}"
        if level["lost"]:
            problems.append(f"{level['lost']} request(s) lost {where}: no answer while the connection stayed open")
        if not level["completed"]:
            seen = f"all {level['sent']} failed ({errors_text(level['errors'])})" if level["sent"] else "none sent"
            problems.append(f"no request completed {where}: {seen}")
    return problems
