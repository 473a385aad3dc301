"""`servd bench URL --endpoint NAME`: closed-loop load against a running servd, and what it saw.

N clients, each on its own connection, each sending its next request as soon as the last one
ended (progress off: one answer per request). Latency is measured here; queue wait, run time
and batch size come from each answer's `timing`. One asyncio process, so on a small machine
the numbers include this process competing with the server for cores: pin them apart
(taskset) when measuring for real.

Before any load, /v1/endpoints is asked whether the endpoint exists (`probe`): a misspelt
name fails at once, naming the ones served, instead of after every level's duration.

The modules, one job each: `options` (what a run is asked to do), `channels` (one client's
connection, with the submit text the client library builds), `level` (one level: warm-up,
measure, drain), `recorder` (what the answers said, summed up), `probe`, `report` (what is
printed), `command` (the arguments and the exit status). Client side: nothing here imports
the server, only servd.errors and servd.client, so a client-only install runs it.
"""

from __future__ import annotations

from servd.tools.bench.command import add_arguments, cli, main, options_from, parse_priority_mix
from servd.tools.bench.level import run, run_level
from servd.tools.bench.options import Options

__all__ = ["Options", "add_arguments", "cli", "main", "options_from", "parse_priority_mix", "run", "run_level"]
