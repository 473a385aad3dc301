"""A generator whose client stops reading can't grow the server past the client's buffer cap (#25).

Partial results travel from the worker thread to the loop; a generator that yields faster than
the loop hands values on used to pile them up in between, uncounted (8 clients that never read
drove RSS to 1.8 GB). Now a worker waits before pulling more once a call has 1 MiB on its way to
the loop, the client is cut at `server.max_client_buffer_bytes`, its request is cancelled, the
generator is closed, and the memory is given back. These run `servd run` in a process of its own,
so its RSS is the daemon's alone.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from tests.procs import http, running
from tests.test_slow_clients import _handshake, frame

CONFIG = """
version: 1
server:
  max_threads: 12  # the flood takes 8: the echo probe has a thread of its own
endpoints:
  flood:
    entrypoint: flood:flood
    concurrency: 8
  echo:
    entrypoint: flood:echo
"""

FLOOD = '''
import threading

CLOSED = []
CHUNK = "x" * (256 * 1024)


def flood(data):
    """Yields 256 KiB strings, at most 4,000 of them (1 GB), as fast as it is asked to."""
    try:
        for _ in range(4000):
            yield CHUNK
    finally:
        CLOSED.append(1)


def echo(data):
    return {"closed": len(CLOSED)}
'''

CLIENTS = 8
MiB = 1 << 20
CAP = 64 * MiB  # server.max_client_buffer_bytes's default


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_clients_that_never_read_a_generator_are_cut_and_memory_stays_bounded(tmp_path):
    """Eight clients run a 1 GB generator each and never read: each is cut, its generator closed,
    the daemon's RSS never grows more than their caps (8 x (64 MiB cap + 1 MiB on its way)),
    another client is answered throughout, and RSS is back near where it started while the cut
    clients still hold their sockets open."""
    (tmp_path / "flood.py").write_text(FLOOD, "utf-8")
    with running(tmp_path, CONFIG) as daemon:
        pid = daemon.proc.pid
        assert http(daemon.port, "POST", "/v1/endpoints/echo", {"data": 1}).status == 200
        baseline = rss_bytes(pid)
        sockets: list[socket.socket] = []
        try:
            for index in range(CLIENTS):
                sock = _handshake(daemon.port)
                submit = {"type": "submit", "id": index, "endpoint": "flood", "data": None}
                sock.sendall(frame(json.dumps(submit)))
                sockets.append(sock)
            peak, slowest_probe = baseline, 0.0
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                peak = max(peak, rss_bytes(pid))
                sent = time.monotonic()
                probe = http(daemon.port, "POST", "/v1/endpoints/echo", {"data": 1})
                slowest_probe = max(slowest_probe, time.monotonic() - sent)
                if probe.body["data"]["closed"] == CLIENTS:
                    break
                time.sleep(0.05)
            closed = http(daemon.port, "POST", "/v1/endpoints/echo", {"data": 1}).body["data"]["closed"]
            assert closed == CLIENTS, f"only {closed} of {CLIENTS} generators were closed within 30 s"
            outcomes = daemon.stats("flood")["outcomes"]
            assert outcomes.get("cancelled", 0) == CLIENTS, outcomes
            growth = peak - baseline
            assert growth < CLIENTS * (CAP + MiB) + 64 * MiB, f"RSS grew {growth / MiB:.0f} MiB"
            assert slowest_probe < 1.0, f"an echo request beside the flood waited {slowest_probe:.2f} s"
            # The clients still hold their sockets open and unread: what waited for them is freed anyway.
            settled = rss_bytes(pid)
            deadline = time.monotonic() + 5
            while settled - baseline >= 48 * MiB and time.monotonic() < deadline:
                time.sleep(0.05)
                settled = rss_bytes(pid)
            assert settled - baseline < 48 * MiB, f"RSS stayed {(settled - baseline) / MiB:.0f} MiB above its start"
        finally:
            for sock in sockets:
                sock.close()
