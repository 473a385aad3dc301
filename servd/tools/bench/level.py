"""One load level (a fixed number of clients, from warm-up to drain), and a run of levels.

Each client is a task on the bench's asyncio loop with its own channel; `Level` holds the
clock marks and the request budget they share. A run first probes the endpoint (`probe`), so
a misspelt name fails before any load. Loop thread only.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from typing import Any

from servd.tools.bench.channels import Channel, Lost, connect_all, open_channel
from servd.tools.bench.options import Options, Picker
from servd.tools.bench.probe import probe
from servd.tools.bench.recorder import Recorder, summarize

PROGRESS_INTERVAL_S = 0.5


@dataclass
class Level:
    """One run at a fixed number of clients, from warm-up to drain."""

    options: Options
    clients: int
    recorder: Recorder = field(default_factory=Recorder)
    tickets: int = 0
    start: float = 0.0
    measure_from: float = 0.0
    stop_at: float = 0.0
    in_flight: int = 0

    def keep_going(self, now: float) -> bool:
        return now < self.stop_at and (now < self.measure_from or self.tickets > 0)

    async def worker(self, channels: list[Channel], index: int) -> None:
        loop = asyncio.get_running_loop()
        picker = Picker(self.options.priorities, seed=index)
        while self.keep_going(sent_at := loop.time()):
            priority = picker.next()
            measured = sent_at >= self.measure_from
            if measured:
                self.tickets -= 1
                self.recorder.count_sent(priority)
            self.in_flight += 1
            try:
                code, timing = await channels[index].call(priority)
            except Lost:
                code, timing = "connection_lost", None
            finally:
                self.in_flight -= 1
            if measured:
                self.recorder.record(code, timing, sent_at, loop.time(), priority)
            if code == "connection_lost":
                channels[index].close()
                channels[index] = await open_channel(self.options)


async def run(options: Options) -> list[dict[str, Any]]:
    """Probe the endpoint, then every level of the sweep, one after the other."""
    await probe(options)
    return [await run_level(options, clients) for clients in options.clients]


async def run_level(options: Options, clients: int) -> dict[str, Any]:
    """Warm up, measure, drain; the level's summary as a JSON-ready dict."""
    channels = await connect_all(options, clients)
    loop = asyncio.get_running_loop()
    level = Level(options, clients, tickets=options.requests)
    level.start = loop.time()
    level.measure_from = level.start + options.warmup_s
    level.stop_at = level.measure_from + options.duration_s
    workers = [asyncio.ensure_future(level.worker(channels, i)) for i in range(clients)]
    reporter = asyncio.ensure_future(_report(level)) if options.progress else None
    try:
        limit = level.stop_at - level.start + options.drain_s
        await asyncio.wait(workers, timeout=limit, return_when=asyncio.FIRST_EXCEPTION)
        lost = level.in_flight
    finally:
        for task in (*workers, reporter):
            if task is not None:
                task.cancel()
        await asyncio.gather(*workers, *([reporter] if reporter else []), return_exceptions=True)
        await asyncio.gather(*(channel.aclose() for channel in channels))
        if options.progress:
            sys.stderr.write("\r\033[K")
    for task in workers:
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            raise failure
    return summarize(level.recorder, clients, level.measure_from, lost, split=bool(options.priorities))


async def _report(level: Level) -> None:
    """The live progress line on stderr."""
    loop = asyncio.get_running_loop()
    while True:
        now = loop.time()
        rec = level.recorder
        if now < level.measure_from:
            line = f"{level.clients:>5} clients  warm-up {now - level.start:4.1f}/{level.options.warmup_s:.1f}s"
        else:
            elapsed = max(now - level.measure_from, 1e-9)
            done = len(rec.totals)
            line = (
                f"{level.clients:>5} clients  {min(elapsed, level.options.duration_s):5.1f}/"
                f"{level.options.duration_s:.1f}s  {done} completed  {done / elapsed:8.1f} req/s  "
                f"{sum(rec.errors.values())} errors  {level.in_flight} in flight"
            )
        sys.stderr.write("\r\033[K" + line)
        sys.stderr.flush()
        await asyncio.sleep(PROGRESS_INTERVAL_S)
