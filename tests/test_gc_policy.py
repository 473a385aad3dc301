"""`servd run` freezes what startup made (gcpolicy); a reload that removes an endpoint must still
free its model, which only a collection can (it sits in reference cycles)."""

from __future__ import annotations

from examples.probes import Tracked
from servd.daemon import gcpolicy
from tests.harness import eventually, serve, write_config

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
            await eventually(
                lambda: model_payload() is None and not d.daemon.retiring,
                "the removed endpoint's model to be freed",
                interval=0.05,
            )
            assert (await d.post("echo", 1)).json()["data"] == 1  # the daemon serves on
        finally:
            gcpolicy.thaw()
