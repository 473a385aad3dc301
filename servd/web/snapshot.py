"""An endpoint's effective config and live stats, as /v1/endpoints and /v1/status show them.

Loop thread only: it reads an endpoint's live state (queue, batches, stats) as it stands between
two events, so a snapshot is consistent without locks. Replicas come from the runner's `describe`.
"""

from __future__ import annotations

from typing import Any

from servd.core.endpoint import Endpoint
from servd.core.stats import quantiles


def endpoint_snapshot(endpoint: Endpoint) -> dict[str, Any]:
    spec = endpoint.spec
    return {
        "name": endpoint.name,
        "entrypoint": spec.entrypoint,
        "devices": endpoint.instances.devices(),
        "concurrency": spec.concurrency,
        "queue": {
            "max_size": spec.queue.max_size,
            "timeout_s": spec.queue.timeout_s,
            "max_per_client": spec.queue.max_per_client,
            "priority_levels": spec.queue.priority_levels,
            "default_priority": spec.queue.default_level,
            "order": spec.queue.order,
            "admit": spec.queue.admit,
        },
        "batch": None
        if spec.batch is None
        else {"max_size": spec.batch.max_size, "max_delay_ms": spec.batch.max_delay_ms, "wait": spec.batch.wait},
        "api_open": spec.api_open,
        "input_schema": None if spec.input_schema is None else dict(spec.input_schema),
        "openai": None if spec.openai is None else {"model": spec.openai.model},
        "accepting": endpoint.accepting,
        "replicas": None if (replicas := endpoint.replicas()) is None else replicas.as_json(),
        "stats": _live_stats(endpoint),
    }


def _live_stats(endpoint: Endpoint) -> dict[str, Any]:
    stats = endpoint.stats
    return {
        "queued": len(endpoint.queue),
        "queued_by_priority": endpoint.queue.depth_by_level(),
        "running": endpoint.running_count(),
        "workers": endpoint.calls_running(),  # on current and retired models alike
        "stuck": endpoint.stuck_count(),
        "lined_up": stats.lined_up,
        "workers_max": endpoint.spec.concurrency * endpoint.instances.live(),
        "batch_size": endpoint.working_batch_size,
        "eta_s": endpoint.eta_for_new(),
        "batch_time_s": stats.batch_time_s,
        "completed": stats.completed,
        "failed": stats.failed,
        "outcomes": {"completed": stats.completed, **stats.outcomes},
        "latency_s": quantiles(stats.totals),
        "wait_s": quantiles(stats.waits),
        "run_s": quantiles(stats.runs),
        "eta_error_s": quantiles(stats.eta_errors),
    }
