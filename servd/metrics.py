"""Prometheus collectors on the daemon's own registry (so tests and daemons stay isolated).

Per-endpoint children are looked up once and kept, so the per-request path does no label
lookups; gauges that mirror live state are read at scrape time, not written per request.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.metrics import MetricWrapperBase

disable_created_metrics()  # type: ignore[no-untyped-call]  # (untyped in prometheus_client)
# *_created series double the output and no dashboard uses them

WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
RUN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """Every servd_ metric; the README's metrics table lists these same names."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ep = ["endpoint"]
        self.requests = Counter("servd_requests", "Admitted requests by how they ended.", [*ep, "outcome"], registry=r)
        self.rejected = Counter(
            "servd_rejected", "Requests refused before admission, by error code.", [*ep, "reason"], registry=r
        )
        self.queue_depth = Gauge("servd_queue_depth", "Requests waiting in the queue.", ep, registry=r)
        self.running = Gauge("servd_running", "Requests running now.", ep, registry=r)
        self.working_batch_size = Gauge(
            "servd_working_batch_size",
            "Largest batch the endpoint forms now (lowered after out-of-memory).",
            ep,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "servd_queue_seconds", "Time from admission to start.", ep, buckets=WAIT_BUCKETS, registry=r
        )
        self.run_seconds = Histogram(
            "servd_run_seconds", "Time of the call (batch) that served a request.", ep, buckets=RUN_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "servd_batch_size", "Requests per entrypoint call.", ep, buckets=BATCH_BUCKETS, registry=r
        )
        self.reloads = Counter("servd_reloads", "Config reloads by result.", ["result"], registry=r)
        self.generation = Gauge("servd_config_generation", "Generation of the config being served.", registry=r)
        self.connections = Gauge("servd_connections", "Open websocket connections.", registry=r)

    def for_endpoint(
        self, name: str, queued: Callable[[], float], running: Callable[[], float], batch: Callable[[], float]
    ) -> EndpointMetrics:
        self.queue_depth.labels(name).set_function(queued)
        self.running.labels(name).set_function(running)
        self.working_batch_size.labels(name).set_function(batch)
        return EndpointMetrics(self, name)

    def forget_endpoint(self, name: str) -> None:
        """Drop a removed endpoint's series so /metrics doesn't report ghosts."""
        metric: MetricWrapperBase
        for metric in (
            self.queue_depth,
            self.running,
            self.working_batch_size,
            self.queue_seconds,
            self.run_seconds,
            self.batch_size,
        ):
            _remove(metric, name)
        for metric in (self.requests, self.rejected):
            for labels in [key for key in metric._metrics if key[0] == name]:
                metric.remove(*labels)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _remove(metric: MetricWrapperBase, name: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(name)


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

    def rejected(self, reason: str) -> None:
        self.metrics.rejected.labels(self.name, reason).inc()
