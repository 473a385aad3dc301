"""`servd run` freezes what startup made (gcpolicy); a reload that removes an endpoint must still
free its model, which only a collection can (it sits in reference cycles)."""

from __future__ import annotations

import asyncio

from examples.probes import Tracked
from servd import gcpolicy
from tests.harness import WAIT_S, serve, write_config

BOTH = """
version: 1
endpoints:
  echo:
    entrypoint: examples.echo:echo
  tracked:
    entrypoint: examples.probes:Tracked
"""

ONLY_ECHO = """
version: 1
endpoints:
  echo:
    entrypoint: examples.echo:echo
"""


async def test_a_removed_endpoints_model_is_freed_although_startup_objects_are_frozen(tmp_path):
    """After freeze_startup (as `servd run` does), removing an endpoint by reload frees its model."""
    Tracked.alive.clear()
    async with serve(tmp_path, BOTH) as d:
        gcpolicy.freeze_startup()
        try:
            assert (await d.post("tracked", 7)).json()["data"] == 7
            (model_payload,) = Tracked.alive
            write_config(tmp_path, ONLY_ECHO)
            d.daemon.request_reload()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + WAIT_S
            while model_payload() is not None or d.daemon.retiring:
                assert loop.time() < deadline, "the removed endpoint's model is still alive"
                await asyncio.sleep(0.05)
            assert (await d.post("echo", 1)).json()["data"] == 1  # the daemon serves on
        finally:
            gcpolicy.thaw()
