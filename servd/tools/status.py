"""`servd status [URL]`: a person-readable summary of a running daemon.

It reads GET /v1/status and GET /v1/endpoints with the standard library only (an operator runs
it on the server, often in a hurry), and prints the daemon's state, its config generation and
last reload, then one line per endpoint: queued, running, workers, batch size, p50/p99 of queue
wait and of run time, the ETA a new request would be given, how far off the ETAs given were
(p50/p99 of |actual - ETA|), and how its requests ended: completed, failed (the entrypoint
raised), timed out, cancelled by their client. Endpoints with priority levels get their queue
depth by level under the table. Only the
entrypoint's failures count as failed: a client that hangs up or a deadline that passes says
nothing about the model. Exit 0 when it got an answer, 1 (with a one-line reason on stderr) when
it couldn't.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, TextIO

DEFAULT_URL = "http://127.0.0.1:8700"
TOKEN_ENV = "SERVD_TOKEN"
NONE = "—"


class Unreachable(Exception):
    """Why there is no summary, in one line for the operator."""


def main(url: str | None, token: str | None, timeout: float = 10.0, out: TextIO | None = None) -> int:
    """Print the summary of the daemon at `url`; the exit status for `servd status`."""
    base = normalise_url(url or DEFAULT_URL)
    token = token or os.environ.get(TOKEN_ENV) or None
    try:
        status = fetch(base, "/v1/status", token, timeout)
        endpoints = fetch(base, "/v1/endpoints", token, timeout)["endpoints"]
        if not all(isinstance(e.get("stats", {}).get("outcomes"), dict) for e in endpoints):
            endpoints = with_metrics_outcomes(endpoints, base, token, timeout)
    except Unreachable as exc:
        print(f"servd status: {exc}", file=sys.stderr)
        return 1
    except (KeyError, TypeError) as exc:
        print(f"servd status: {base} does not answer like servd ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 1
    print(render(base, status, endpoints), file=out or sys.stdout)
    return 0


def normalise_url(url: str) -> str:
    """ "host:port" or a full URL, without a trailing slash."""
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def with_metrics_outcomes(
    endpoints: list[dict[str, Any]], base: str, token: str | None, timeout: float
) -> list[dict[str, Any]]:
    """Endpoints with `stats.outcomes` read from /metrics, for a daemon whose /v1/endpoints lacks them.

    Without either, the outcome columns show — rather than a count that mixes cancels into failures.
    """
    try:
        counts = outcomes_from_metrics(_get(base, "/metrics", token, timeout, "text/plain").decode("utf-8", "replace"))
    except Unreachable:
        return endpoints
    return [e | {"stats": e.get("stats", {}) | {"outcomes": counts.get(e["name"], {})}} for e in endpoints]


_REQUESTS_TOTAL = re.compile(r'^servd_requests_total\{endpoint="([^"]*)",outcome="([^"]*)"\} (\S+)$', re.M)


def outcomes_from_metrics(text: str) -> dict[str, dict[str, int]]:
    """`servd_requests_total` of the Prometheus text: endpoint -> outcome -> count."""
    counts: dict[str, dict[str, int]] = {}
    for name, outcome, value in _REQUESTS_TOTAL.findall(text):
        counts.setdefault(name, {})[outcome] = int(float(value))
    return counts


def fetch(base: str, path: str, token: str | None, timeout: float) -> Any:
    """GET base+path as JSON, or raise Unreachable saying why not."""
    body = _get(base, path, token, timeout, "application/json")
    try:
        return json.loads(body)
    except ValueError:
        raise Unreachable(f"{base + path} did not answer with JSON; is servd listening there?") from None


def _get(base: str, path: str, token: str | None, timeout: float, accept: str) -> bytes:
    headers = {"Accept": accept}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(base + path, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body: bytes = response.read()
    except urllib.error.HTTPError as exc:
        raise Unreachable(_http_problem(base + path, exc)) from None
    except urllib.error.URLError as exc:
        raise Unreachable(f"cannot reach servd at {base}: {exc.reason}") from None
    except (OSError, ValueError) as exc:  # timeouts, resets, a malformed URL
        raise Unreachable(f"cannot reach servd at {base}: {exc}") from None
    return body


def _http_problem(url: str, exc: urllib.error.HTTPError) -> str:
    if exc.code == 401:
        return f"{url} needs a token: pass --token TOKEN or set ${TOKEN_ENV} (a line of server.tokens_file)"
    try:
        message = json.loads(exc.read())["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = exc.reason
    return f"{url} answered HTTP {exc.code}: {message}"


# -- rendering (pure) ------------------------------------------------------------------------

COLUMNS = (
    "endpoint", "queued", "running", "workers", "batch", "wait p50/p99", "run p50/p99", "eta new",
    "eta error p50/p99", "done", "failed", "timeout", "cancelled",
)  # fmt: skip
# The outcome columns after "done": each an error code of servd_requests_total. Other codes
# (unavailable: ended by a drain or shutdown) are named under the table.
OUTCOME_COLUMNS = ("endpoint_failed", "timeout", "cancelled")


def render(base: str, status: dict[str, Any], endpoints: Sequence[dict[str, Any]], now: float | None = None) -> str:
    now = time.time() if now is None else now
    state = "draining" if status.get("shutting_down") else "ready" if status.get("ready") else "loading"
    lines = [
        f"servd {status.get('version', '?')} at {base}: {state}, up {duration(status.get('uptime_s'))}",
        f"config {status.get('config', '?')}, generation {status.get('generation', '?')}",
        "last reload: " + reload_text(status.get("last_reload"), now),
    ]
    restart = status.get("restart_needed") or []
    if restart:
        lines.append(f"restart needed to apply: {', '.join(restart)}")
    lines.append("")
    if not endpoints:
        lines.append("no endpoints")
        return "\n".join(lines)
    rows = [list(COLUMNS)] + [endpoint_row(e) for e in endpoints]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    lowered = [
        e["name"] for e in endpoints if e.get("batch") and e["stats"].get("batch_size") != e["batch"]["max_size"]
    ]
    if lowered:
        lines.append(f"batch size lowered after running out of memory: {', '.join(lowered)}")
    replicas = [text for e in endpoints if (text := replicas_text(e))]
    if replicas:
        lines.append(f"replicas on the cluster: {'; '.join(replicas)}")
    closed = [e["name"] for e in endpoints if not e.get("accepting", True)]
    if closed:
        lines.append(f"not accepting requests (draining): {', '.join(closed)}")
    others = [text for e in endpoints if (text := other_outcomes(e))]
    if others:
        lines.append(f"other endings: {'; '.join(others)}")
    levels = [text for e in endpoints if (text := queued_by_priority(e))]
    if levels:
        lines.append(f"queued by priority (1 = highest): {'; '.join(levels)}")
    return "\n".join(lines)


def endpoint_row(endpoint: dict[str, Any]) -> list[str]:
    stats = endpoint.get("stats", {})
    batch = endpoint.get("batch")
    if batch is None:
        batch_text = NONE
    elif stats.get("batch_size") != batch["max_size"]:
        batch_text = f"{stats.get('batch_size')}/{batch['max_size']}"
    else:
        batch_text = str(batch["max_size"])
    return [
        str(endpoint["name"]),
        str(stats.get("queued", NONE)),
        str(stats.get("running", NONE)),
        f"{stats.get('workers', NONE)}/{stats.get('workers_max', NONE)}",
        batch_text,
        pair(stats.get("wait_s")),
        pair(stats.get("run_s")),
        eta(stats.get("eta_s")),
        pair(stats.get("eta_error_s")),
        str(stats.get("completed", 0)),
        *outcome_cells(stats.get("outcomes")),
    ]


def replicas_text(endpoint: dict[str, Any]) -> str:
    """`name live/wanted live` plus pending and dead ones, for an endpoint on a Ray cluster."""
    replicas = endpoint.get("replicas")
    if not replicas:
        return ""
    text = f"{endpoint['name']} {replicas['live']}/{replicas['wanted']} live"
    for state in ("pending", "dead"):
        if replicas.get(state):
            text += f", {replicas[state]} {state}"
    return text


def outcome_cells(outcomes: dict[str, int] | None) -> list[str]:
    if outcomes is None:
        return [NONE] * len(OUTCOME_COLUMNS)
    return [str(outcomes.get(code, 0)) for code in OUTCOME_COLUMNS]


def other_outcomes(endpoint: dict[str, Any]) -> str:
    """ "words unavailable 3": the endpoint's ending codes that have no column, or ""."""
    outcomes = endpoint.get("stats", {}).get("outcomes") or {}
    rest = {code: n for code, n in outcomes.items() if code not in ("completed", *OUTCOME_COLUMNS) and n}
    if not rest:
        return ""
    return f"{endpoint['name']} " + ", ".join(f"{code} {n}" for code, n in sorted(rest.items()))


def queued_by_priority(endpoint: dict[str, Any]) -> str:
    """ "classify 1:0 2:3 3:12": waiting requests per level, for an endpoint with more than one; else ""."""
    depths = endpoint.get("stats", {}).get("queued_by_priority") or {}
    if len(depths) < 2:
        return ""
    return f"{endpoint['name']} " + " ".join(f"{level}:{n}" for level, n in sorted(depths.items(), key=_level_order))


def _level_order(item: tuple[str, Any]) -> int:
    level = item[0]
    return int(level) if level.isdigit() else 0


def pair(percentiles: dict[str, Any] | None) -> str:
    if not percentiles or (percentiles.get("p50") is None and percentiles.get("p99") is None):
        return NONE
    return f"{duration(percentiles.get('p50'))}/{duration(percentiles.get('p99'))}"


def eta(seconds: float | None) -> str:
    if seconds is None:
        return NONE
    return "now" if seconds <= 0 else duration(seconds)


def duration(seconds: float | None) -> str:
    """0.4ms, 12ms, 1.5s, 3m05s, 2h07m: short and comparable at a glance."""
    if seconds is None:
        return NONE
    if seconds < 0.001:
        return f"{seconds * 1000:.2f}ms"
    if seconds < 0.1:
        return f"{seconds * 1000:.1f}ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def reload_text(last: dict[str, Any] | None, now: float) -> str:
    if not last:
        return "none since start"
    at = last.get("at")
    when = NONE
    if isinstance(at, (int, float)):
        stamp = datetime.datetime.fromtimestamp(at).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
        when = f"{stamp} ({duration(max(0.0, now - at))} ago)"
    text = f"{last.get('result', '?')} at {when}, took {duration(last.get('took_s'))}"
    if last.get("error"):
        error = str(last["error"]).strip().replace("\n", "\n    ")
        text += f"\n  error: {error}"
    changes = last.get("changes")
    if isinstance(changes, dict):
        named = [f"{kind} {', '.join(map(str, names))}" for kind, names in changes.items() if names]
        text += "\n  changes: " + ("; ".join(named) if named else "none")
    return text
