"""Prometheus collectors on the daemon's own registry (so tests and daemons stay isolated).

Every metric is declared once in METRICS; the README's metrics table is generated from it.
Per-endpoint children are looked up once and kept, so the per-request path does no label
lookups; gauges that mirror live state are read at scrape time, not written per request.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase

disable_created_metrics()  # type: ignore[no-untyped-call]  # (untyped upstream) *_created series help nobody

WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
RUN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass(frozen=True)
class MetricDef:
    attr: str
    name: str
    kind: type[MetricWrapperBase]
    labels: tuple[str, ...]
    help: str
    buckets: tuple[float, ...] = ()

    @property
    def exposed_name(self) -> str:
        return self.name + ("_total" if self.kind is Counter else "")

    @property
    def type_name(self) -> str:
        return self.kind.__name__.lower()


EP = ("endpoint",)
METRICS = (
    MetricDef("requests", "servd_requests", Counter, (*EP, "outcome"), "Admitted requests by how they ended (completed or an error code)."),
    MetricDef("rejected", "servd_rejected", Counter, (*EP, "reason"), "Requests refused before admission, by error code (endpoint \"\" when unknown)."),
    MetricDef("queue_depth", "servd_queue_depth", Gauge, EP, "Requests waiting in the queue."),
    MetricDef("running", "servd_running", Gauge, EP, "Requests running now."),
    MetricDef("stuck", "servd_stuck_calls", Gauge, EP, "Calls still running after all their requests ended (timeout, cancel); their threads don't count against max_threads."),
    MetricDef("working_batch_size", "servd_working_batch_size", Gauge, EP, "Largest batch the endpoint forms now (lowered after out-of-memory)."),
    MetricDef("queue_seconds", "servd_queue_seconds", Histogram, EP, "Time from admission to start, of completed requests.", WAIT_BUCKETS),
    MetricDef("run_seconds", "servd_run_seconds", Histogram, EP, "Duration of the call (batch) that served a completed request.", RUN_BUCKETS),
    MetricDef("batch_size", "servd_batch_size", Histogram, EP, "Requests per entrypoint call.", BATCH_BUCKETS),
    MetricDef("reloads", "servd_reloads", Counter, ("result",), "Config reloads by result (applied, invalid, failed)."),
    MetricDef("generation", "servd_config_generation", Gauge, (), "Generation of the config being served (1 at start, +1 per applied reload)."),
    MetricDef("connections", "servd_connections", Gauge, (), "Open websocket connections."),
)  # fmt: skip


class Metrics:
    """Every servd_ metric, as attributes named by METRICS."""

    requests: Counter
    rejected: Counter
    queue_depth: Gauge
    running: Gauge
    stuck: Gauge
    working_batch_size: Gauge
    queue_seconds: Histogram
    run_seconds: Histogram
    batch_size: Histogram
    reloads: Counter
    generation: Gauge
    connections: Gauge

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_open_fds vs max_fds, RSS, CPU: standard names
        for d in METRICS:
            extra: dict[str, Any] = {"buckets": d.buckets} if d.buckets else {}
            setattr(self, d.attr, d.kind(d.name, d.help, d.labels, registry=self.registry, **extra))

    def for_endpoint(
        self,
        name: str,
        queued: Callable[[], float],
        running: Callable[[], float],
        batch: Callable[[], float],
        stuck: Callable[[], float],
    ) -> EndpointMetrics:
        self.queue_depth.labels(name).set_function(queued)
        self.running.labels(name).set_function(running)
        self.stuck.labels(name).set_function(stuck)
        self.working_batch_size.labels(name).set_function(batch)
        return EndpointMetrics(self, name)

    def forget_endpoint(self, name: str) -> None:
        """Drop a removed endpoint's series so /metrics doesn't report ghosts."""
        for d in METRICS:
            if d.labels[:1] != EP:
                continue
            metric = getattr(self, d.attr)
            if len(d.labels) == 1:
                with contextlib.suppress(KeyError):
                    metric.remove(name)
                continue
            for labels in [key for key in metric._metrics if key[0] == name]:
                metric.remove(*labels)

    def note_rejected(self, endpoint: str, reason: str) -> None:
        """A refused request; `endpoint` must be a configured name or "" (never client text: cardinality)."""
        self.rejected.labels(endpoint, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(eq=False)
class EndpointMetrics:
    """One endpoint's children, resolved once."""

    metrics: Metrics
    name: str
    _outcomes: dict[str, Counter] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.queue_seconds = self.metrics.queue_seconds.labels(self.name)
        self.run_seconds = self.metrics.run_seconds.labels(self.name)
        self.batch_size = self.metrics.batch_size.labels(self.name)

    def ended(self, outcome: str) -> None:
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = self.metrics.requests.labels(self.name, outcome)
        child.inc()
