"""A config edit is applied even while another file next to servd.yaml keeps changing.

Found by the echo benchmark: with `servd run servd.yaml 2>> servd.log` in one directory, every
request's log line is a filesystem event in the watched directory. servd/daemon/watch.py restarts its
DEBOUNCE_S timer on every event in the directory, so while lines arrive faster than that the
timer never fires and the edited config is never reloaded (and each line costs the loop a
callback plus two timer operations).
"""

from __future__ import annotations

import asyncio
import os
import textwrap
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Any

from tests.harness import Running, eventually, serve

WRITE_EVERY_S = 0.02  # faster than the watcher's debounce: a busy log file
MAX_LINES = 2000  # bounds the writer (40 s at the rate above)
RELOAD_WAIT_S = 10.0  # generous: a reload normally lands in a fraction of a second

CONFIG = """
version: 1
endpoints:
  echo:
    entrypoint: examples.echo:echo
    concurrency: {concurrency}
"""


def save_atomic(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.swp")
    temp.write_text(textwrap.dedent(text).lstrip())
    os.replace(temp, path)


async def keep_writing(path: Path) -> None:
    with open(path, "a") as log:
        for i in range(MAX_LINES):
            log.write(f'{{"event": "request", "id": {i}}}\n')
            log.flush()
            await asyncio.sleep(WRITE_EVERY_S)


async def generation(d: Running) -> int:
    reply = await d.http("GET", "/v1/status")
    value: Any = reply.json()["generation"]
    return int(value)


async def test_config_edit_is_applied_while_a_log_file_beside_it_keeps_changing(tmp_path):
    """Saving servd.yaml reloads it (generation 2) although servd.log in its directory changes every 20 ms."""
    async with serve(tmp_path, CONFIG.format(concurrency=1)) as d:
        writer = asyncio.ensure_future(keep_writing(tmp_path / "servd.log"))
        try:
            save_atomic(d.config_path, CONFIG.format(concurrency=3))
            reached = await eventually(
                lambda: generation(d), "the edit to be applied", until=lambda g: g >= 2, timeout=RELOAD_WAIT_S
            )
            assert reached == 2
            shown = (await d.http("GET", "/v1/endpoints")).json()["endpoints"]
            assert shown[0]["concurrency"] == 3
        finally:
            writer.cancel()
            with suppress(asyncio.CancelledError):
                await writer
