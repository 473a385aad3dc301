"""`servd tune --plot FILE.svg`: throughput against p99 for every point, written as SVG by hand.

No plotting library: a scatter plot with axes, the Pareto front as a line, the start and the
choice marked and the p99 goal as a dashed line is a few dozen SVG elements, and a dependency
(matplotlib pulls numpy, pillow, fonttools, ...) would be the largest part of servd's install
for it. Each point carries a <title>, so a browser shows its setting on hover. The p99 axis is
logarithmic when the values span more than a factor of 20.
"""

from __future__ import annotations

import math
from html import escape

from servd.tools.tune.model import Point
from servd.tools.tune.report import Report, setting_text

WIDTH, HEIGHT = 760, 480
LEFT, RIGHT, TOP, BOTTOM = 80, 200, 50, 60  # margins; the legend sits in the right one
COLORS = {"point": "#9aa5b1", "front": "#1f6feb", "start": "#d97706", "chosen": "#d1242f", "goal": "#57606a"}


class Axis:
    """Data -> pixels along one axis, linear or logarithmic, with round tick values."""

    def __init__(self, low: float, high: float, pixels: tuple[float, float], log: bool) -> None:
        self.log = log
        if log:
            low, high = 10 ** math.floor(math.log10(low)), 10 ** math.ceil(math.log10(high))
        else:
            step = _step(high - low if high > low else abs(high) or 1.0)
            low, high = math.floor(low / step) * step, math.ceil(high / step) * step
            if high == low:
                high = low + step
        self.low, self.high, self.pixels = low, high, pixels

    def __call__(self, value: float) -> float:
        f = self._f
        share = (f(value) - f(self.low)) / (f(self.high) - f(self.low))
        return self.pixels[0] + share * (self.pixels[1] - self.pixels[0])

    def _f(self, value: float) -> float:
        return math.log10(max(value, 1e-12)) if self.log else float(value)

    def ticks(self) -> list[float]:
        if self.log:
            decades = range(round(math.log10(self.low)), round(math.log10(self.high)) + 1)
            values = [m * 10.0**d for d in decades for m in (1, 2, 5)]
            return [v for v in values if self.low <= v <= self.high]
        step = _step(self.high - self.low)
        count = round((self.high - self.low) / step)
        return [self.low + i * step for i in range(count + 1)]


def _step(span: float) -> float:
    raw = span / 5
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def _label(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e6 else f"{value:.2g}"


def svg(report: Report) -> str:
    """The SVG document (a string) for the report's points."""
    points = [p for p in report.search.points if p.measure.p99_s is not None and p.measure.completed]
    lines = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="24" font-size="15">servd tune: {escape(report.endpoint)} in {escape(report.file)}</text>',
    ]
    if not points:
        lines.append(f'<text x="{LEFT}" y="{HEIGHT / 2}">no point completed a request</text></svg>')
        return "\n".join(lines) + "\n"
    latencies = [p.measure.p99_s * 1e3 for p in points if p.measure.p99_s]
    goal_ms = None if report.goal.p99_s is None else report.goal.p99_s * 1e3
    span = [*latencies, *([goal_ms] if goal_ms else [])]
    x = Axis(min(span), max(span), (LEFT, WIDTH - RIGHT), log=max(span) / max(min(span), 1e-9) > 20)
    y = Axis(0.0, 1.05 * max(p.measure.throughput for p in points), (HEIGHT - BOTTOM, TOP), log=False)
    lines += _axes(x, y)
    if goal_ms is not None:
        gx = x(goal_ms)
        lines.append(f'<line x1="{gx:.1f}" y1="{TOP}" x2="{gx:.1f}" y2="{HEIGHT - BOTTOM}" stroke="{COLORS["goal"]}" '
                     f'stroke-dasharray="5,4"/><text x="{gx + 4:.1f}" y="{TOP + 12}" fill="{COLORS["goal"]}">'
                     f'p99 goal {goal_ms:g} ms</text>')  # fmt: skip
    front = sorted((p for p in points if p.index in report.front), key=lambda p: p.measure.p99_s or 0.0)
    if len(front) > 1:
        path = " ".join(f"{x((p.measure.p99_s or 0) * 1e3):.1f},{y(p.measure.throughput):.1f}" for p in front)
        lines.append(f'<polyline points="{path}" fill="none" stroke="{COLORS["front"]}" stroke-width="1.5"/>')
    lines += [_marker(p, x, y, report) for p in points]
    lines += _legend()
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def _axes(x: Axis, y: Axis) -> list[str]:
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    out = [f'<line x1="{LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/>',
           f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}" stroke="black"/>']  # fmt: skip
    for value in x.ticks():
        px = x(value)
        out.append(f'<line x1="{px:.1f}" y1="{bottom}" x2="{px:.1f}" y2="{bottom + 5}" stroke="black"/>'
                   f'<text x="{px:.1f}" y="{bottom + 18}" text-anchor="middle">{_label(value)}</text>')  # fmt: skip
    for value in y.ticks():
        py = y(value)
        out.append(f'<line x1="{LEFT - 5}" y1="{py:.1f}" x2="{right}" y2="{py:.1f}" stroke="#eaeef2"/>'
                   f'<text x="{LEFT - 8}" y="{py + 4:.1f}" text-anchor="end">{_label(value)}</text>')  # fmt: skip
    scale = " (log scale)" if x.log else ""
    out.append(f'<text x="{(LEFT + right) / 2}" y="{HEIGHT - 18}" text-anchor="middle">'
               f"p99 latency at the client, ms{scale}</text>")  # fmt: skip
    out.append(f'<text transform="translate(20,{(TOP + bottom) / 2}) rotate(-90)" text-anchor="middle">'
               "throughput, requests/s</text>")  # fmt: skip
    return out


def _marker(p: Point, x: Axis, y: Axis, report: Report) -> str:
    px, py = x((p.measure.p99_s or 0) * 1e3), y(p.measure.throughput)
    chosen, start = report.chosen_point, report.start_point
    color = COLORS["front"] if p.index in report.front else COLORS["point"]
    title = (f"#{p.index} {p.trial.phase}: {setting_text(p.setting, report.devices)}; {p.trial.clients} clients: "
             f"{p.measure.throughput:.1f} req/s, p99 {(p.measure.p99_s or 0) * 1e3:.2f} ms")  # fmt: skip
    shape = f'<circle cx="{px:.1f}" cy="{py:.1f}" r="4" fill="{color}"><title>{escape(title)}</title></circle>'
    if start is not None and p is start:
        shape += (f'<rect x="{px - 7:.1f}" y="{py - 7:.1f}" width="14" height="14" fill="none" '
                  f'stroke="{COLORS["start"]}" stroke-width="2"/>')  # fmt: skip
    if chosen is not None and p is chosen:
        shape += (f'<circle cx="{px:.1f}" cy="{py:.1f}" r="9" fill="none" stroke="{COLORS["chosen"]}" '
                  f'stroke-width="2.5"/>')  # fmt: skip
    return shape


def _legend() -> list[str]:
    left, top = WIDTH - RIGHT + 20, TOP + 10
    items = [
        f'<circle cx="{left}" cy="{top}" r="4" fill="{COLORS["point"]}"/>'
        f'<text x="{left + 12}" y="{top + 4}">a point tried</text>',
        f'<circle cx="{left}" cy="{top + 22}" r="4" fill="{COLORS["front"]}"/>'
        f'<text x="{left + 12}" y="{top + 26}">Pareto front</text>',
        f'<rect x="{left - 7}" y="{top + 37}" width="14" height="14" fill="none" stroke="{COLORS["start"]}" '
        f'stroke-width="2"/><text x="{left + 12}" y="{top + 48}">start (the file)</text>',
        f'<circle cx="{left}" cy="{top + 66}" r="9" fill="none" stroke="{COLORS["chosen"]}" stroke-width="2.5"/>'
        f'<text x="{left + 12}" y="{top + 70}">chosen</text>',
    ]
    return items
