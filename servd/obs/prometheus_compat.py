"""The one private prometheus_client attribute servd reads, with a check that it still exists.

prometheus_client has no public way to list the label values a metric holds; the metrics module
needs them to remove a removed endpoint's series. Like web.compat for Tornado, the use and its
check sit together so an upgrade that drops the attribute fails tests/test_compat.py, not a reload.
Pure reads; any thread.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics import MetricWrapperBase


def labelled_children(metric: MetricWrapperBase) -> Iterable[tuple[str, ...]]:
    """The label-value tuples a labelled metric holds (prometheus_client has no public listing)."""
    return [tuple(key) for key in metric._metrics]


def missing() -> list[str]:
    """The private prometheus_client names above that the installed version no longer has."""
    probe = Counter("servd_compat_probe", "probe", ["label"], registry=CollectorRegistry())
    return [] if hasattr(probe, "_metrics") else ["prometheus_client: Counter(..., labelnames)._metrics"]
