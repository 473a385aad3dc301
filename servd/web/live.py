"""The live feed behind GET /v1/events: a status snapshot about once a second, an event per reload.

Loop thread only. Once a second a timer samples each endpoint's completions since the last tick
into a five-minute history (throughput and the p99 latency of what completed in that second),
whether anyone listens or not: a few microseconds per endpoint, so a console opened later still
draws the last minutes. The snapshot itself (the daemon's status and every endpoint as
/v1/endpoints shows it) is built and encoded once per tick, only while someone subscribes, and
the same text goes to every subscriber. A subscriber that hasn't taken the previous snapshot yet
skips this one (its handler decides), so a stalled console costs one buffered snapshot, not a
growing queue. Reload events are never skipped.

Events (each `event: KIND` with `data:` one JSON object carrying `"type": KIND`):
- hello: on subscribing; `interval_s`, `history` {endpoint: {t, rps, p99_s}} and recent `reloads`
- status: `at`, `status` (as /v1/status, plus `connections` and `consoles`), `endpoints` (as
  /v1/endpoints), `sample` {endpoint: {t, rps, p99_s}} (the history's newest point; {} before one)
- reload: each reload's record, as /v1/status's last_reload
"""

from __future__ import annotations

import itertools
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tornado.ioloop import PeriodicCallback

from servd.core.stats import percentile
from servd.inputs import jsontext
from servd.web.snapshot import endpoint_snapshot

if TYPE_CHECKING:
    from servd.core.endpoint import Endpoint
    from servd.daemon.daemon import Daemon

INTERVAL_S = 1.0
HISTORY_POINTS = 300  # five minutes at one point a second
RELOADS_KEPT = 10


class Subscriber(Protocol):
    """An open /v1/events stream, as the feed writes to it."""

    def push(self, event: str, droppable: bool) -> None:
        """Write one event (SSE text); `droppable` ones (status) may be skipped by a slow reader."""

    def authorized(self) -> bool:
        """Whether its token is still valid (checked after each reload: tokens_file may have changed)."""

    def close(self) -> None:
        """End the stream."""


@dataclass
class Series:
    """One endpoint's recent throughput and p99, a point a tick."""

    endpoint: weakref.ref[Endpoint]
    completed: int
    t: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))
    rps: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))
    p99_s: deque[float | None] = field(default_factory=lambda: deque(maxlen=HISTORY_POINTS))

    def latest(self) -> dict[str, Any]:
        return {"t": self.t[-1], "rps": self.rps[-1], "p99_s": self.p99_s[-1]} if self.t else {}

    def as_dict(self) -> dict[str, list[Any]]:
        return {"t": list(self.t), "rps": list(self.rps), "p99_s": list(self.p99_s)}


class LiveFeed:
    def __init__(self, daemon: Daemon, interval_s: float = INTERVAL_S) -> None:
        self.daemon = daemon
        self.interval_s = interval_s
        self.subscribers: set[Subscriber] = set()
        self.series: dict[str, Series] = {}
        self.reloads: deque[dict[str, Any]] = deque(maxlen=RELOADS_KEPT)
        if daemon.last_reload is not None:
            self.reloads.append(daemon.last_reload)
        self._last_tick = time.monotonic()  # rates are measured on the monotonic clock; points carry wall time
        daemon.reload_observers.append(self._on_reload)
        self._timer = PeriodicCallback(self._tick, interval_s * 1000)
        self._timer.start()

    # -- subscribers -----------------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> None:
        """Add a stream; it gets the hello (history, reloads) and a status snapshot at once."""
        self.subscribers.add(subscriber)
        subscriber.push(sse("hello", self.hello()), droppable=False)
        subscriber.push(sse("status", self.status()), droppable=False)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    def hello(self) -> dict[str, Any]:
        return {
            "type": "hello",
            "interval_s": self.interval_s,
            "history": {name: s.as_dict() for name, s in self.series.items()},
            "reloads": list(self.reloads),
        }

    def status(self) -> dict[str, Any]:
        daemon = self.daemon
        status = daemon.status() | {"connections": len(daemon.connections), "consoles": len(self.subscribers)}
        return {
            "type": "status",
            "at": round(time.time(), 3),
            "status": status,
            "endpoints": [endpoint_snapshot(e) for e in daemon.endpoints.values()],
            "sample": {name: s.latest() for name, s in self.series.items()},
        }

    def _broadcast(self, kind: str, body: dict[str, Any], *, droppable: bool) -> None:
        text = sse(kind, body)  # encoded once, whoever listens
        for subscriber in list(self.subscribers):
            subscriber.push(text, droppable)

    # -- the clock and reloads -------------------------------------------------------------

    def _tick(self) -> None:
        if self.daemon.shutting_down and not self.subscribers:
            self._timer.stop()  # the front has closed every stream; nothing more to say
            return
        self.sample(time.time(), time.monotonic())
        if self.subscribers:
            self._broadcast("status", self.status(), droppable=True)

    def sample(self, now: float, ticked_at: float) -> None:
        """One history point per endpoint: completions since the last tick, per second, and their p99.

        `now` is the point's timestamp (wall clock, for a chart); `ticked_at` the monotonic clock,
        so an NTP step can't skew the rate."""
        elapsed = max(1e-3, ticked_at - self._last_tick)
        self._last_tick = ticked_at
        endpoints = self.daemon.endpoints
        for name in [n for n in self.series if n not in endpoints]:
            del self.series[name]
        for name, endpoint in endpoints.items():
            series = self.series.get(name)
            if series is None or series.endpoint() is not endpoint:  # new, or removed and added again
                series = self.series[name] = Series(weakref.ref(endpoint), 0)
            stats = endpoint.stats
            done = stats.completed - series.completed
            series.completed = stats.completed
            newest = deque(itertools.islice(reversed(stats.totals), min(done, len(stats.totals))))
            series.t.append(round(now, 3))
            series.rps.append(round(done / elapsed, 3))
            p99 = percentile(newest, 0.99)
            series.p99_s.append(None if p99 is None else round(p99, 6))

    def _on_reload(self, record: dict[str, Any]) -> None:
        """Keep the record, tell every stream, drop streams whose token a new tokens_file revoked, and
        send a fresh status at once, so a console shows an added endpoint without waiting a tick."""
        self.reloads.append(record)
        for subscriber in list(self.subscribers):
            if not subscriber.authorized():
                self.unsubscribe(subscriber)
                subscriber.close()
        if not self.subscribers:
            return
        self._broadcast("reload", {"type": "reload", **record}, droppable=False)
        self._broadcast("status", self.status(), droppable=False)


def sse(kind: str, body: dict[str, Any]) -> str:
    """One server-sent event; JSON text has no raw newlines, so `data:` is one line."""
    return f"event: {kind}\ndata: {jsontext.compact(body)}\n\n"
