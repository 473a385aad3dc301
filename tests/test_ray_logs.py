"""Under Ray (cluster.engine: ray), servd's JSON log holds only JSON: one object a line (#24).

As a Ray driver, servd's process also wrote Ray's plain text: the "SIGTERM handler is not set"
note and the token notice (Ray's Python loggers, through Python's last-resort handler), the
replicas' forwarded output in ANSI colours, and on a clean SIGTERM a C++ stack dump, twice, that
looked like a crash (servd/runners/ray_logs.py). One `servd run` on the test cluster: a replica
that prints to both streams, one request, SIGTERM, then every line of the log is read.
"""

from __future__ import annotations

import json
import signal
from typing import Any

import pytest

from tests import procs
from tests.harness import eventually_sync

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

CHATTY = '''\
import sys


def chatty(data):
    """Prints a line to stdout and a coloured one to stderr, as model code does, then echoes."""
    print(f"stdout says {data}", flush=True)
    print(f"\\x1b[31mstderr says {data}\\x1b[0m", file=sys.stderr, flush=True)
    return data
'''


def config(cluster: Any) -> str:
    return f"""
version: 1
server: {{log: {{format: json}}}}
cluster: {{engine: ray, address: "{cluster.address}"}}
endpoints:
  chatty:
    entrypoint: chatty_replica:chatty
    replicas: 1
    resources: {{num_cpus: 0.1}}
"""


def test_every_line_of_the_json_log_is_one_json_object_under_ray(tmp_path, ray_cluster):
    """A request to a replica that prints, then SIGTERM: servd drains and exits 0, its log has no plain-text
    line (no Ray note, no colour codes, no stack dump), and the replica's output is in it as events."""
    (tmp_path / "chatty_replica.py").write_text(CHATTY)
    with procs.running(tmp_path, config(ray_cluster)) as daemon:
        assert procs.http(daemon.port, "POST", "/v1/endpoints/chatty", {"data": 7}).status == 200
        said = {("stdout", "stdout says 7"), ("stderr", "stderr says 7")}
        eventually_sync(  # the replica's own lines, not just any of Ray's worker output before them
            lambda: {
                (e.get("stream"), e.get("line")) for e in daemon.log_events() if e.get("event") == "cluster output"
            },
            "the replica's output in servd's log",
            until=lambda found: said <= found,
        )
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(60) == 0
    lines = (tmp_path / procs.LOG).read_text("utf-8", errors="replace").splitlines()
    not_json = [line for line in lines if not _is_json_object(line)]
    assert not_json == [], "\n".join(not_json)
    output = {(e["stream"], e["line"]) for e in map(json.loads, lines) if e.get("event") == "cluster output"}
    assert said <= output
    assert not any("SIGTERM received" in line for line in lines)


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
