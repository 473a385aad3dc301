"""What `servd tune` prints: the table of every point, the choice and its gain, the YAML to paste, JSON.

Pure functions of the search's results; the plot lives in servd.tools.tune.plot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from servd.config.yamledit import scalar_text
from servd.tools.tune.model import Goal, Point, Setting, Tried
from servd.tools.tune.search import Search


@dataclass(frozen=True)
class Report:
    """A finished search and how it was run."""

    file: str
    endpoint: str
    goal: Goal
    search: Search
    front: set[int]  # indexes of the points on the throughput/p99 Pareto front
    devices: tuple[str, ...]  # the file's `device` list (instances are a prefix of it)
    duration_s: float
    warmup_s: float
    elapsed_s: float

    @property
    def start(self) -> Tried | None:
        return self.search.tried.get(self.search.start)

    @property
    def chosen_point(self) -> Point | None:
        chosen = self.search.chosen
        return None if chosen is None else chosen.best(self.goal)

    @property
    def start_point(self) -> Point | None:
        start = self.start
        return None if start is None or not start.points else start.best(self.goal)

    @property
    def gain(self) -> float | None:
        """Throughput of the choice (or of the candidate the re-measure turned down) over the start's,
        re-measured back to back; None when there was nothing to compare."""
        start = self.start_point
        if start is None or not self.goal.meets(start):
            return None  # the start met the goal nowhere: there is nothing to compare with
        return self.search.confirmed_gain


def pareto(points: list[Point]) -> set[int]:
    """Indexes of the points no other point beats on both throughput and p99 (errors and OOM left out)."""
    usable = [p for p in points if p.measure.p99_s is not None and not p.oom and p.measure.completed]
    usable = [p for p in usable if not p.measure.error_count]

    def dominates(a: Point, b: Point) -> bool:
        ta, tb, la, lb = a.measure.throughput, b.measure.throughput, a.measure.p99_s, b.measure.p99_s
        assert la is not None and lb is not None
        return ta >= tb and la <= lb and (ta > tb or la < lb)

    return {p.index for p in usable if not any(dominates(q, p) for q in usable)}


def clients_text(count: int) -> str:
    return f"{count} client{'' if count == 1 else 's'}"


def goal_text(goal: Goal) -> str:
    return "most throughput" if goal.p99_s is None else f"most throughput with p99 <= {goal.p99_s * 1e3:g} ms"


def setting_text(setting: Setting, devices: Sequence[str] = ()) -> str:
    parts = [f"concurrency {setting.concurrency}"]
    if setting.max_size is not None:
        parts += [f"batch.max_size {setting.max_size}", f"batch.max_delay_ms {_ms(setting.max_delay_ms)}"]
    if len(devices) > 1:
        parts.append(f"device [{', '.join(devices[: setting.instances])}]")
    return ", ".join(parts)


def _ms(value: float | None) -> str:
    return "—" if value is None else scalar_text(value)


def _num(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.2f}"


def table(report: Report) -> str:
    """One row per point: its setting, load and what it measured; * on the Pareto front, > the choice."""
    instances = len(report.devices) > 1
    head = f"{'#':>3}  {'phase':<12} {'conc':>4} {'batch':>5} {'delay':>6}"
    head += f" {'inst':>4}" if instances else ""
    head += f" {'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'mean batch':>10} {'errors':>6}"
    chosen = report.chosen_point
    rows = [head]
    for p in report.search.points:
        s, m = p.setting, p.measure
        row = f"{p.index:>3}  {p.trial.phase:<12} {s.concurrency:>4} {_ms(s.max_size):>5} {_ms(s.max_delay_ms):>6}"
        row += f" {s.instances:>4}" if instances else ""
        mean = "—" if m.mean_batch is None else f"{m.mean_batch:.1f}"
        row += f" {p.trial.clients:>7} {m.throughput:>9.1f} {_num(m.p50_s):>8} {_num(m.p99_s):>8} {mean:>10}"
        row += f" {m.error_count:>6}"
        marks = ("*" if p.index in report.front else " ") + (" >" if chosen is not None and p is chosen else "")
        marks += " out of memory" if p.oom else ""
        rows.append((row + "  " + marks).rstrip())
    rows.append("* on the throughput/p99 Pareto front (no other point has more throughput and a lower p99)  > chosen")
    return "\n".join(rows)


def summary(report: Report) -> list[str]:
    """The choice, the start and the gain, each measured in this run; why each climb stopped."""
    lines = []
    chosen, start = report.chosen_point, report.start_point
    if chosen is not None:
        lines.append(f"chosen  {setting_text(chosen.setting, report.devices)}: {_point_text(chosen)}")
    if start is not None:
        lines.append(f"start   {setting_text(start.setting, report.devices)}: {_point_text(start)}")
    lines += _gain_lines(report)
    lines += [f"note    {note}" for note in report.search.notes]
    return lines


def _gain_lines(report: Report) -> list[str]:
    search, gain, start = report.search, report.gain, report.start_point
    chosen = report.chosen_point
    if start is None or chosen is None:
        return []
    if search.confirmed is None or gain is None:
        if chosen is start:
            return ["gain    none: no setting beat the start"]
        return [f"gain    the start met the goal at no load tried; the choice does, at {_point_text(chosen)}"]
    first, last = search.confirmed[0], search.confirmed[-1]
    rates = "/".join(f"{p.measure.throughput:.0f}" for p in search.confirmed)
    how = f"back to back (points {first.index}-{last.index}: start/choice/choice/start {rates} req/s)"
    candidate = search.candidate or search.chosen
    assert candidate is not None
    in_search = candidate.best(report.goal).measure.throughput / start.measure.throughput - 1
    if search.candidate is not None:
        text = setting_text(candidate.setting, report.devices)
        lines = [f"gain    none kept: {text} measured {gain:+.0%} {how}; in the search {in_search:+.0%}"]
    else:
        lines = [f"gain    {gain:+.0%} throughput, measured {how}; in the search {in_search:+.0%}"]
    if abs(gain - in_search) > 0.25 or gain * in_search < 0:
        lines.append(
            "note    the re-measure and the search disagree: the machine's speed varied between them; a longer "
            "--duration steadies the numbers (pin servd and the tuner apart with taskset where you can)"
        )
    return lines


def _point_text(p: Point) -> str:
    return (
        f"{p.measure.throughput:.1f} req/s, p50 {_num(p.measure.p50_s)} ms, p99 {_num(p.measure.p99_s)} ms "
        f"at {clients_text(p.trial.clients)} (point {p.index})"
    )


def tuned_values(setting: Setting, devices: Sequence[str]) -> dict[tuple[str, ...], Any]:
    """The endpoint's keys the tune sets, as key paths under the endpoint -> value."""
    values: dict[tuple[str, ...], Any] = {("concurrency",): setting.concurrency}
    if setting.max_size is not None:
        values[("batch", "max_size")] = setting.max_size
        values[("batch", "max_delay_ms")] = setting.max_delay_ms
    if len(devices) > 1:
        values[("device",)] = list(devices[: setting.instances])
    return values


def fragment(endpoint: str, values: Mapping[tuple[str, ...], Any]) -> str:
    """The tuned keys as YAML to paste under `endpoints:`."""
    lines = ["endpoints:", f"  {endpoint}:"]
    batch = {path[1]: value for path, value in values.items() if path[0] == "batch"}
    for path, value in values.items():
        if path[0] == "batch":
            continue
        text = f"[{', '.join(scalar_text(v) for v in value)}]" if isinstance(value, list) else scalar_text(value)
        lines.append(f"    {path[0]}: {text}")
    if batch:
        lines.append("    batch:")
        lines += [f"      {key}: {scalar_text(value)}" for key, value in batch.items()]
    return "\n".join(lines) + "\n"


def as_json(report: Report, written: bool) -> dict[str, Any]:
    chosen, start = report.chosen_point, report.start_point
    return {
        "file": report.file,
        "endpoint": report.endpoint,
        "goal": {"p99_ms": None if report.goal.p99_s is None else report.goal.p99_s * 1e3},
        "duration_s": report.duration_s,
        "warmup_s": report.warmup_s,
        "elapsed_s": round(report.elapsed_s, 1),
        "points": [_point_json(p, report) for p in report.search.points],
        "start": None if start is None else start.index,
        "chosen": None if chosen is None else chosen.index,
        "chosen_setting": None if chosen is None else _setting_json(chosen.setting, report.devices),
        "confirmed": None if report.search.confirmed is None else [p.index for p in report.search.confirmed],
        "gain": None if report.gain is None else round(report.gain, 4),
        "notes": report.search.notes,
        "written": written,
    }


def _setting_json(setting: Setting, devices: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"concurrency": setting.concurrency}
    if setting.max_size is not None:
        out["batch"] = {"max_size": setting.max_size, "max_delay_ms": setting.max_delay_ms}
    if len(devices) > 1:
        out["device"] = list(devices[: setting.instances])
    return out


def _point_json(p: Point, report: Report) -> dict[str, Any]:
    m = p.measure
    return {
        "index": p.index,
        "phase": p.trial.phase,
        "setting": _setting_json(p.setting, report.devices),
        "clients": p.trial.clients,
        "throughput_rps": round(m.throughput, 2),
        "latency_ms": {"p50": _round_ms(m.p50_s), "p99": _round_ms(m.p99_s)},
        "run_p50_ms": _round_ms(m.run_p50_s),
        "wait_p50_ms": _round_ms(m.wait_p50_s),
        "mean_batch": None if m.mean_batch is None else round(m.mean_batch, 2),
        "working_batch": m.working_batch,
        "completed": m.completed,
        "errors": dict(m.errors),
        "out_of_memory": p.oom,
        "pareto": p.index in report.front,
        "meets_goal": report.goal.meets(p),
    }


def _round_ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 3)
