"""Prometheus collectors on the daemon's own registry (so tests and daemons stay isolated).

Every metric is declared once in METRICS; the docs' metrics table (docs/reference/metrics.md) is generated from it.
The four written per request (PER_REQUEST) are plain counts kept on the event loop and turned
into samples at scrape time (also on the loop): prometheus_client's own objects take a lock
per update, which cost about a tenth of servd's CPU per request. Gauges that mirror live state
are read at scrape time, not written per request.
"""

from __future__ import annotations

import contextlib
from bisect import bisect_left
from collections.abc import Callable, Iterator
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
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.utils import floatToGoString

from servd.obs.prometheus_compat import labelled_children

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
    MetricDef("admitted", "servd_admitted", Counter, (*EP, "priority"), "Admitted requests by priority level (1 = highest)."),
    MetricDef("priority_queue_seconds", "servd_priority_queue_seconds", Histogram, (*EP, "priority"), "Time from admission to start, of completed requests, by priority level.", WAIT_BUCKETS),
    MetricDef("eta_error", "servd_eta_error_seconds", Histogram, EP, "How far off the ETA given at admission was: |actual - predicted| time to completion, of completed requests.", WAIT_BUCKETS),
    MetricDef("replicas", "servd_replicas", Gauge, (*EP, "state"), "With cluster.engine: ray, the endpoint's replicas: wanted, live, pending (starting or restarting) and dead."),
    MetricDef("reloads", "servd_reloads", Counter, ("result",), "Config reloads by result (applied, invalid, failed)."),
    MetricDef("generation", "servd_config_generation", Gauge, (), "Generation of the config being served (1 at start, +1 per applied reload)."),
    MetricDef("connections", "servd_connections", Gauge, (), "Open websocket connections."),
)  # fmt: skip


# kept by EndpointSeries, under the same attribute names (counters: label value -> count)
PER_REQUEST = (
    "requests",
    "queue_seconds",
    "run_seconds",
    "batch_size",
    "admitted",
    "priority_queue_seconds",
    "eta_error",
)


class Metrics:
    """Every servd_ metric: those outside PER_REQUEST as attributes named by METRICS."""

    rejected: Counter
    queue_depth: Gauge
    running: Gauge
    stuck: Gauge
    working_batch_size: Gauge
    replicas: Gauge
    reloads: Counter
    generation: Gauge
    connections: Gauge

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_open_fds vs max_fds, RSS, CPU: standard names
        self.series: dict[str, EndpointSeries] = {}
        for d in METRICS:
            if d.attr in PER_REQUEST:
                continue
            extra: dict[str, Any] = {"buckets": d.buckets} if d.buckets else {}
            setattr(self, d.attr, d.kind(d.name, d.help, d.labels, registry=self.registry, **extra))
        self.registry.register(_PerRequestCollector(self.series))

    def for_endpoint(
        self,
        name: str,
        queued: Callable[[], float],
        running: Callable[[], float],
        batch: Callable[[], float],
        stuck: Callable[[], float],
    ) -> EndpointSeries:
        self.queue_depth.labels(name).set_function(queued)
        self.running.labels(name).set_function(running)
        self.stuck.labels(name).set_function(stuck)
        self.working_batch_size.labels(name).set_function(batch)
        return self.series.setdefault(name, EndpointSeries())  # a reloaded endpoint keeps counting

    def forget_endpoint(self, name: str) -> None:
        """Drop a removed endpoint's series so /metrics doesn't report ghosts."""
        self.series.pop(name, None)
        for d in METRICS:
            if d.labels[:1] != EP or d.attr in PER_REQUEST:
                continue
            metric = getattr(self, d.attr)
            if len(d.labels) == 1:
                with contextlib.suppress(KeyError):
                    metric.remove(name)
                continue
            for labels in [key for key in labelled_children(metric) if key[0] == name]:
                metric.remove(*labels)

    def note_rejected(self, endpoint: str, reason: str) -> None:
        """A refused request; `endpoint` must be a configured name or "" (never client text: cardinality)."""
        self.rejected.labels(endpoint, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class LoopHistogram:
    """A histogram written only on the event loop: a bisect and two additions, no lock."""

    __slots__ = ("bounds", "counts", "labels", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.labels = [floatToGoString(b) for b in (*bounds, float("inf"))]  # type: ignore[no-untyped-call]
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # first bound >= value: `le` semantics
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative (le, count) pairs, as the exposition format wants them."""
        running, out = 0, []
        for label, count in zip(self.labels, self.counts, strict=True):
            running += count
            out.append((label, float(running)))
        return out


def _buckets_of(attr: str) -> tuple[float, ...]:
    return next(d.buckets for d in METRICS if d.attr == attr)


@dataclass(eq=False)
class EndpointSeries:
    """One endpoint's per-request metrics (PER_REQUEST), written on the loop."""

    requests: dict[str, int] = field(default_factory=dict)  # outcome -> count
    admitted: dict[int, int] = field(default_factory=dict)  # priority level -> count
    run_seconds: LoopHistogram = field(default_factory=lambda: LoopHistogram(_buckets_of("run_seconds")))
    batch_size: LoopHistogram = field(default_factory=lambda: LoopHistogram(_buckets_of("batch_size")))
    priority_queue_seconds: dict[int, LoopHistogram] = field(default_factory=dict)  # priority level -> histogram
    eta_error: LoopHistogram = field(default_factory=lambda: LoopHistogram(_buckets_of("eta_error")))

    def ended(self, outcome: str) -> None:
        self.requests[outcome] = self.requests.get(outcome, 0) + 1

    def admitted_at(self, priority: int) -> None:
        self.admitted[priority] = self.admitted.get(priority, 0) + 1

    def waited(self, priority: int, queue_s: float) -> None:
        """One observation per request, by level; servd_queue_seconds is their sum, made at scrape."""
        histogram = self.priority_queue_seconds.get(priority)
        if histogram is None:
            histogram = self.priority_queue_seconds[priority] = LoopHistogram(_buckets_of("priority_queue_seconds"))
        histogram.observe(queue_s)

    @property
    def queue_seconds(self) -> LoopHistogram:
        """Every level's wait together (the same buckets), summed when /metrics is read."""
        merged = LoopHistogram(_buckets_of("queue_seconds"))
        for histogram in self.priority_queue_seconds.values():
            merged.counts = [a + b for a, b in zip(merged.counts, histogram.counts, strict=True)]
            merged.total += histogram.total
        return merged


class _PerRequestCollector:
    """Turns every endpoint's EndpointSeries into samples when /metrics is read."""

    def __init__(self, series: dict[str, EndpointSeries]) -> None:
        self.series = series

    def describe(self) -> list[Metric]:
        return []  # names are unique by construction; don't collect at registration

    def collect(self) -> Iterator[Metric]:
        for d in METRICS:
            if d.attr not in PER_REQUEST:
                continue
            if d.kind is Counter:
                counter = CounterMetricFamily(d.name, d.help, labels=d.labels)
                for name, series in self.series.items():
                    counts: dict[Any, int] = getattr(series, d.attr)
                    for label, count in counts.items():
                        counter.add_metric([name, str(label)], count)
                yield counter
                continue
            histogram = HistogramMetricFamily(d.name, d.help, labels=d.labels)
            for name, series in self.series.items():
                values: LoopHistogram | dict[int, LoopHistogram] = getattr(series, d.attr)
                if isinstance(values, LoopHistogram):
                    histogram.add_metric([name], values.buckets(), values.total)
                    continue
                for label, by_label in values.items():
                    histogram.add_metric([name, str(label)], by_label.buckets(), by_label.total)
            yield histogram
