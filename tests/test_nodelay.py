"""Streaming connections send each message at once: no Nagle delay behind the one before (#32).

Tornado turns Nagle's algorithm back on after every HTTP response, the websocket upgrade
included. servd then sends `queued` and, 20 ms later, `completed`: the second, small, waited for
the client's delayed ACK of the first (the client, having sent a message, delays its ACKs), and a
20 ms call took ~44 ms at the client. servd sets TCP_NODELAY on every websocket, so a call's time
is the call's. (An SSE response is one-way: the client ACKs promptly, and 40 partials 20 ms apart
arrived 20 ms apart before this change too, so it has no test here.)
"""

from __future__ import annotations

import statistics
import time

import pytest

from tests.harness import serve

CONFIG = """
version: 1
endpoints:
  nap:
    entrypoint: naps:nap
"""

NAPS = """
import time


def nap(data):
    time.sleep(0.02)
    return data
"""

CALLS = 15
CALL_S = 0.02


async def test_a_20_ms_call_with_progress_on_completes_in_about_20_ms_over_the_websocket(tmp_path):
    """With progress messages on (the default), each call's round trip is within a few ms of the
    call itself, not the ~40 ms a delayed ACK adds when Nagle holds `completed` behind `queued`."""
    (tmp_path / "naps.py").write_text(NAPS, "utf-8")
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        took = []
        for index in range(CALLS):
            sent = time.perf_counter()
            await ws.submit(index, "nap", index)
            assert (await ws.terminal(index))["data"] == index
            took.append(time.perf_counter() - sent)
        assert statistics.median(took) < CALL_S + 0.008, [round(t * 1000, 1) for t in took]


pytestmark = pytest.mark.timeout(60)
