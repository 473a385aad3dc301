"""The console's first state, put in index.html itself so that a page is never blank.

Without it the console drew nothing until its event stream's first event arrived: a screenshot
taken at load, a slow link, a reader without JavaScript all saw an empty page saying
"connecting…". So GET / carries the stream's first two events (hello and status, as
`web/live.py` builds them) and each endpoint's example request (`protocols/examples.py`) as a
`<script type="application/json" id="first-state">` block, which the console renders before it
opens the stream (a data block runs nothing, so the page's CSP, scripts from this origin only,
holds), and the same overview as plain HTML inside <main> for readers without JavaScript.

Who gets it is the API's rule, unchanged: with no tokens configured, anyone who can load the
page (the same people who can GET /v1/events); with tokens, only a request whose Authorization
header holds a valid one (a token in the address is not taken for a page). A browser loading the
page sends no such header, so it gets the page without state and asks for a token, as before.

Loop thread only: it reads the live endpoints. Costs one snapshot (a few microseconds an
endpoint) and one JSON encoding per page load.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from servd.protocols.examples import chat_example, data_example

# Characters that could end the data block or start markup inside it, as JSON escapes.
_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"})
FIRST_POINTS = 60  # the charts' last minute; the stream's hello brings all five a moment later
COLUMNS = (("queued", "Queued"), ("running", "Running"), ("workers", "Workers"), ("batch", "Batch"),
           ("wait", "Wait p50 / p99"), ("run", "Run p50 / p99"), ("eta", "ETA new"), ("done", "Done"),
           ("failed", "Failed"))  # fmt: skip  # as overview.js's table


def first_state(hello: dict[str, Any], status: dict[str, Any], endpoints: Mapping[str, Any]) -> dict[str, Any]:
    """What the page starts from: the stream's hello (its history cut to the last FIRST_POINTS, so
    a page of 50 endpoints stays near 100 kB instead of 500) and status events, and each endpoint's
    example (`data` for /v1/endpoints/{name} and the websocket, `chat` for /v1/chat/completions)
    at this generation. `endpoints`: name -> EndpointSpec."""
    examples = {name: {"data": data_example(spec), "chat": chat_example(spec)} for name, spec in endpoints.items()}
    recent = {
        name: {key: values[-FIRST_POINTS:] for key, values in series.items()}
        for name, series in hello["history"].items()
    }
    hello = {**hello, "history": recent}
    return {"hello": hello, "status": status, "examples": examples, "generation": status["status"]["generation"]}


def script_json(value: Any) -> str:
    """JSON text that can sit inside <script type="application/json"> (no "</script>" in it)."""
    return json.dumps(value, separators=(",", ":"), default=_plain).translate(_SCRIPT_SAFE)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    return str(value)


def overview_html(status_event: dict[str, Any]) -> str:
    """The overview (the daemon's summary and a row per endpoint) as plain HTML, the same markup
    and numbers the console's script draws, less the charts."""
    status = status_event["status"]
    state = "draining" if status["shutting_down"] else "ready" if status["ready"] else "loading models"
    summary = (("Config", status["config"]), ("Generation", status["generation"]),
               ("Up", duration(status["uptime_s"])), ("Websockets", status.get("connections", 0)),
               ("Consoles", status.get("consoles", 0)), ("State", state))  # fmt: skip
    rows = "".join(_row(snapshot) for snapshot in status_event["endpoints"])
    head = "".join(f'<th scope="col">{label}</th>' for _, label in COLUMNS)
    parts = [
        "<h1>Overview</h1>",
        '<dl class="summary">'
        + "".join(f"<div><dt>{label}</dt><dd>{_text(value)}</dd></div>" for label, value in summary)
        + "</dl>",
    ]
    if status.get("restart_needed"):
        parts.append(f'<p class="warning">Restart needed to apply: {_text(", ".join(status["restart_needed"]))}</p>')
    parts += [
        '<section aria-labelledby="endpoints-title"><h2 id="endpoints-title">Endpoints</h2>',
        f'<div class="table-wrap cards"><table class="endpoints"><thead><tr><th scope="col">Endpoint</th>{head}'
        f"</tr></thead><tbody>{rows}</tbody></table></div>",
        "" if rows else "<p>No endpoints are served.</p>",
        "</section>",
    ]
    return "".join(parts)


def _row(snapshot: Mapping[str, Any]) -> str:
    name = _text(snapshot["name"])
    href = "#/endpoints/" + html.escape(_uri_component(snapshot["name"]), quote=True)
    values = cells(snapshot)
    tds = "".join(
        f'<td class="num" data-label="{label}" data-field="{key}">{_text(values[key])}</td>' for key, label in COLUMNS
    )
    return f'<tr data-endpoint="{name}"><th scope="row"><a href="{href}">{name}</a></th>{tds}</tr>'


def cells(snapshot: Mapping[str, Any]) -> dict[str, str]:
    """An endpoint's overview numbers in words, as overview.js's `cells`."""
    s, batch = snapshot["stats"], snapshot.get("batch")
    return {
        "queued": count(s["queued"]),
        "running": count(s["running"]),
        "workers": f"{s['workers']}/{s['workers_max']}",
        "batch": f"{s['batch_size']}/{batch['max_size']}" if batch else "—",
        "wait": f"{seconds(s['wait_s']['p50'])} / {seconds(s['wait_s']['p99'])}",
        "run": f"{seconds(s['run_s']['p50'])} / {seconds(s['run_s']['p99'])}",
        "eta": "—" if s["eta_s"] is None else seconds(s["eta_s"]),
        "done": count(s["completed"]),
        "failed": count(s["failed"]),
    }


# -- numbers in words, as format.js -------------------------------------------------------------


def seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 0.001:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1000:.{2 if value < 0.01 else 1}f} ms"
    if value < 60:
        return f"{value:.{2 if value < 10 else 1}f} s"
    return duration(value)


def duration(value: float) -> str:
    s = int(value)
    d, hh, mm = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if d:
        return f"{d}d {hh}h"
    if hh:
        return f"{hh}h {mm:02d}m"
    if mm:
        return f"{mm}m {s % 60:02d}s"
    return f"{s}s"


def count(value: int | None) -> str:
    if value is None:
        return "—"
    return f"{value:,}" if value >= 10000 else str(value)


def _text(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _uri_component(text: str) -> str:
    return quote(text, safe="-_.!~*'()")  # as encodeURIComponent
