"""`servd bench URL --endpoint NAME`: closed-loop load against a running servd, and what it saw.

N clients, each on its own connection, each sending its next request as soon as the last one
ended (progress off: one answer per request). Latency is measured here; queue wait, run time
and batch size come from each answer's `timing`. One asyncio process, so on a small machine
the numbers include this process competing with the server for cores: pin them apart
(taskset) when measuring for real.

"lost" counts requests that got no answer at all while their connection stayed open, when the
run ended plus a grace period: servd promises every admitted request one terminal message,
so anything but 0 is a bug. A dropped connection is counted as the error `connection_lost`.

`--priority P` sends every request at level P, `--priority-mix 1:0.2,3:0.8` draws each request's
level at random with those weights, and `--deadline-s S` gives each request its own deadline;
the results are then also split by level. What is printed lives in servd.tools.bench_report.

`--data-file x.npy` (or `.npz`, several named arrays) loads a tensor workload: over the
websocket each request is one binary frame (README: Binary frames), over HTTP the arrays go as
JSON lists. A `.npy` array is sent as the input named by `--tensor` (default x).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servd.client._http import Pool, Target
from servd.client._tensors import as_json, submit_frame
from servd.client.aio import scheduling_fields
from servd.client.errors import ConnectFailed, ServdError, error_from_body
from servd.tools.bench_report import failures, summary_text, table_text

CONNECT_CHUNK = 32  # connections opened at once, to stay under the server's listen backlog
PROGRESS_INTERVAL_S = 0.5
CLOSE_WAIT_S = 2.0  # for the server's answer to a close frame, at the end of a level
MAX_CLIENTS = 10_000


class Lost(Exception):
    """The connection closed with a request in flight."""


@dataclass(frozen=True)
class Options:
    url: str
    endpoint: str
    clients: tuple[int, ...] = (1,)
    duration_s: float = 10.0
    requests: int = 100_000
    data_json: str = "null"
    transport: str = "ws"
    warmup_s: float = 1.0
    token: str | None = None
    drain_s: float = 30.0
    connect_timeout_s: float = 10.0
    progress: bool = False
    priorities: tuple[tuple[int, float], ...] = ()  # (level, weight); () sends no priority
    deadline_s: float | None = None
    arrays: dict[str, Any] | None = field(default=None, compare=False)  # a tensor workload (--data-file x.npy)

    @property
    def title(self) -> str:
        return f"servd bench {self.url} endpoint={self.endpoint} transport={self.transport}"

    def fields(self) -> dict[int | None, str]:
        """Each level's scheduling members as JSON text (None: no priority sent)."""
        levels: list[int | None] = [level for level, _ in self.priorities] or [None]
        return {level: scheduling_fields(level, self.deadline_s) for level in levels}


class Picker:
    """Each request's level: the one given, or drawn with the mix's weights (seeded per client)."""

    def __init__(self, priorities: tuple[tuple[int, float], ...], seed: int) -> None:
        self.levels: list[int | None] = [level for level, _ in priorities] or [None]
        self.weights = [weight for _, weight in priorities] or [1.0]
        self.rng = random.Random(seed)

    def next(self) -> int | None:
        if len(self.levels) == 1:
            return self.levels[0]
        return self.rng.choices(self.levels, self.weights)[0]


@dataclass
class Recorder:
    """What the measured requests (sent after the warm-up) got."""

    totals: list[float] = field(default_factory=list)
    queues: list[float] = field(default_factory=list)
    runs: list[float] = field(default_factory=list)
    batches: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    last_end: float = 0.0
    by_priority: dict[int, Recorder] = field(default_factory=dict)  # only when priorities are sent

    def count_sent(self, priority: int | None = None) -> None:
        self.sent += 1
        if priority is not None:
            self.by_priority.setdefault(priority, Recorder()).sent += 1

    def record(
        self, code: str, timing: dict[str, Any] | None, sent_at: float, ended_at: float, priority: int | None = None
    ) -> None:
        if priority is not None:
            self.by_priority.setdefault(priority, Recorder()).record(code, timing, sent_at, ended_at)
        self.last_end = max(self.last_end, ended_at)
        if code != "completed":
            self.errors[code] += 1
            return
        self.totals.append(ended_at - sent_at)
        if timing:
            self.queues.append(float(timing.get("queue_s", 0.0)))
            self.runs.append(float(timing.get("run_s", 0.0)))
            self.batches[int(timing.get("batch_size", 1))] += 1


# -- channels: one client's connection -------------------------------------------------------


class WsChannel:
    def __init__(self, conn: Any, options: Options) -> None:
        self.conn = conn
        self.prefix = f'{{"type":"submit","endpoint":{json.dumps(options.endpoint)},"progress":false,"id":'
        self.suffixes = {level: f',"data":{options.data_json}{fields}}}' for level, fields in options.fields().items()}
        self.next_id = 0
        self.endpoint = options.endpoint
        self.arrays = options.arrays
        self.fields = {level: fields + ',"progress":false' for level, fields in options.fields().items()}

    @classmethod
    async def open(cls, options: Options) -> WsChannel:
        from tornado.httpclient import HTTPClientError, HTTPRequest
        from tornado.websocket import websocket_connect

        from servd.client._ws import _refusal

        url = Target.parse(options.url).ws_url()
        headers = {"Authorization": f"Bearer {options.token}"} if options.token else {}
        timeout = options.connect_timeout_s
        request = HTTPRequest(url, headers=headers, connect_timeout=timeout, request_timeout=timeout)
        try:
            conn = await websocket_connect(request, max_message_size=1 << 30)
        except HTTPClientError as exc:
            raise _refusal(url, exc) from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {url}: {exc}") from None
        return cls(conn, options)

    async def call(self, priority: int | None = None) -> tuple[str, dict[str, Any] | None]:
        from tornado.websocket import WebSocketClosedError

        self.next_id += 1
        request_id = self.next_id
        if self.arrays is not None:  # one binary frame (servd/protocols/frames.py)
            message_out: str | bytes = submit_frame(request_id, self.endpoint, self.arrays, self.fields[priority])
        else:
            message_out = f"{self.prefix}{request_id}{self.suffixes[priority]}"
        try:
            await self.conn.write_message(message_out, binary=isinstance(message_out, bytes))
        except WebSocketClosedError:
            raise Lost from None
        while True:
            text = await self.conn.read_message()
            if text is None:
                raise Lost
            message = json.loads(text if isinstance(text, str) else text[4 : 4 + int.from_bytes(text[:4], "little")])
            if message.get("id") not in (request_id, None):
                continue  # an answer to an earlier request that was counted as lost
            if message.get("type") == "completed":
                return "completed", message.get("timing")
            return error_from_body(message).code, None

    def close(self) -> None:
        self.conn.close()

    async def aclose(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Close, and read until the server's close (bounded): a socket still open when the loop
        ends is left to the garbage collector, a ResourceWarning where bench runs in-process."""
        self.conn.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._read_to_close(), wait_s)

    async def _read_to_close(self) -> None:
        while await self.conn.read_message() is not None:
            pass


class HttpChannel:
    def __init__(self, options: Options) -> None:
        target = Target.parse(options.url)
        self.pool = Pool(target, options.connect_timeout_s)
        self.path = target.endpoint_path(options.endpoint)
        self.bodies = {
            level: f'{{"data":{options.data_json}{fields}}}'.encode() for level, fields in options.fields().items()
        }
        self.headers = {"Host": target.netloc, "Content-Type": "application/json"}
        if options.token:
            self.headers["Authorization"] = f"Bearer {options.token}"

    @classmethod
    async def open(cls, options: Options) -> HttpChannel:
        return cls(options)

    async def call(self, priority: int | None = None) -> tuple[str, dict[str, Any] | None]:
        try:
            response = await self.pool.request("POST", self.path, self.headers, self.bodies[priority])
            body = await response.read()
        except (OSError, asyncio.IncompleteReadError) as exc:
            if isinstance(exc, ConnectionRefusedError):
                raise ConnectFailed(f"cannot connect: {exc}") from None
            raise Lost from None
        self.pool.release(response.connection)
        try:
            answer = json.loads(body)
        except ValueError:
            return f"http_{response.status}", None
        if response.status == 200:
            return "completed", answer.get("timing")
        return error_from_body(answer, response.status).code, None

    def close(self) -> None:
        for connection in self.pool.idle:
            connection.close()
        self.pool.idle.clear()

    async def aclose(self) -> None:
        await self.pool.close()


Channel = WsChannel | HttpChannel


# -- one load level ----------------------------------------------------------------------------


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
                channels[index] = await _open(self.options)


async def _open(options: Options) -> Channel:
    if options.transport == "http":
        return await HttpChannel.open(options)
    return await WsChannel.open(options)


async def _connect_all(options: Options, count: int) -> list[Channel]:
    """`count` open channels, or none and the first error (the ones that did open are closed)."""
    channels: list[Channel] = []
    for first in range(0, count, CONNECT_CHUNK):
        chunk = range(first, min(count, first + CONNECT_CHUNK))
        opened = await asyncio.gather(*(_open(options) for _ in chunk), return_exceptions=True)
        channels += [c for c in opened if isinstance(c, (WsChannel, HttpChannel))]
        failure = next((e for e in opened if isinstance(e, BaseException)), None)
        if failure is not None:
            await asyncio.gather(*(channel.aclose() for channel in channels))
            raise failure
    return channels


async def run_level(options: Options, clients: int) -> dict[str, Any]:
    """Warm up, measure, drain; the level's summary as a JSON-ready dict."""
    channels = await _connect_all(options, clients)
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
    return summarize(level, lost)


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


def _percentiles(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)

    def at(q: float) -> float | None:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 6) if ordered else None

    return {"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "max": at(1.0)}


def summarize(level: Level, lost: int) -> dict[str, Any]:
    """The level's JSON-ready summary; `by_priority` (level "0" = the endpoint's default) only
    when the run sent priorities."""
    rec = level.recorder
    elapsed = max(rec.last_end - level.measure_from, 0.0)
    completed = len(rec.totals)
    summary = {
        "clients": level.clients,
        "sent": rec.sent,
        "completed": completed,
        "errors": dict(sorted(rec.errors.items())),
        "lost": lost,
        "elapsed_s": round(elapsed, 4),
        "throughput_rps": round(completed / elapsed, 2) if elapsed > 0 else 0.0,
        "latency_s": _latencies(rec),
        "batch_sizes": {str(size): count for size, count in sorted(rec.batches.items())},
    }
    if level.options.priorities:
        summary["by_priority"] = {
            str(priority): {
                "sent": part.sent,
                "completed": len(part.totals),
                "errors": dict(sorted(part.errors.items())),
                "latency_s": _latencies(part),
            }
            for priority, part in sorted(rec.by_priority.items())
        }
    return summary


def _latencies(rec: Recorder) -> dict[str, dict[str, float | None]]:
    return {"total": _percentiles(rec.totals), "queue": _percentiles(rec.queues), "run": _percentiles(rec.runs)}


async def run(options: Options) -> list[dict[str, Any]]:
    """Every level of the sweep, one after the other."""
    return [await run_level(options, clients) for clients in options.clients]


# -- command line ------------------------------------------------------------------------------


EXIT_STATUS = (
    "Exit status: 0 when every level completed at least one request and lost none; 1 when a level "
    "lost a request or completed none (every request failed: a wrong endpoint, a refused token, a "
    "model that always raises), or when the server can't be reached; 2 for bad arguments. Errors "
    "beside completions (queue_full, timeout, ...) are the server's answer to the load and leave it "
    "0; read them from the output (--json: levels[].errors)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench's options and its exit-status rule.

    Shared by the `servd bench` subcommand and `python -m servd.tools.bench`.
    """
    parser.epilog = EXIT_STATUS
    parser.add_argument("url", help="the server, e.g. ws://127.0.0.1:8700 (http:// works too)")
    parser.add_argument("--endpoint", required=True, help="endpoint to load")
    parser.add_argument("--clients", default="1", help="concurrent clients; a list (1,16,64,256) sweeps")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per level (default 10)")
    parser.add_argument("--requests", type=int, default=100_000, help="at most this many per level (default 100000)")
    payload = parser.add_mutually_exclusive_group()
    payload.add_argument("--data", default="null", help="request data as a JSON literal (default null)")
    payload.add_argument(
        "--data-file", type=Path, help="request data from a JSON file, or tensors from a .npy or .npz file"
    )
    parser.add_argument("--tensor", default="x", help="with --data-file x.npy: the input's name (default x)")
    parser.add_argument("--transport", choices=("ws", "http"), default="ws", help="websocket (default) or HTTP POST")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured load first (default 1)")
    parser.add_argument("--token", default=os.environ.get("SERVD_TOKEN"), help="bearer token (default $SERVD_TOKEN)")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to wait for answers at the end (default 30)")
    levels = parser.add_mutually_exclusive_group()
    levels.add_argument("--priority", type=int, help="send every request at this priority level (1 = highest)")
    levels.add_argument(
        "--priority-mix",
        metavar="LEVEL:WEIGHT,...",
        help="draw each request's level with these weights, e.g. 1:0.2,3:0.8 (a fifth at level 1); "
        "results are split by level",
    )
    parser.add_argument("--deadline-s", type=float, help="each request's own deadline in seconds (deadline_s)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no live progress line on stderr")


def options_from(args: argparse.Namespace) -> Options:
    """Checked Options from parsed arguments; raises ValueError naming the bad one."""
    try:
        clients = tuple(int(part) for part in args.clients.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--clients must be integers separated by commas, got {args.clients!r}") from None
    if not clients or not all(1 <= n <= MAX_CLIENTS for n in clients):
        raise ValueError(f"--clients must be between 1 and {MAX_CLIENTS}, got {args.clients!r}")
    if args.duration <= 0 or args.requests < 1 or args.warmup < 0 or args.drain < 0:
        raise ValueError("--duration and --requests must be positive, --warmup and --drain not negative")
    arrays = _arrays(args.data_file, args.tensor) if args.data_file else None
    text = args.data_file.read_text("utf-8") if args.data_file and arrays is None else args.data
    try:
        data = json.loads(text) if arrays is None else as_json(arrays)
        data_json = json.dumps(data, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"{'--data-file' if args.data_file else '--data'} is not valid JSON: {exc}") from None
    Target.parse(args.url)
    return Options(
        url=args.url, endpoint=args.endpoint, clients=clients, duration_s=args.duration, requests=args.requests,
        data_json=data_json, transport=args.transport, warmup_s=args.warmup, token=args.token or None,
        drain_s=args.drain, progress=not args.no_progress and sys.stderr.isatty(),
        priorities=_priorities(args.priority, args.priority_mix), deadline_s=_deadline(args.deadline_s),
        arrays=arrays,
    )  # fmt: skip


def _arrays(path: Path, name: str) -> dict[str, Any] | None:
    """The arrays of a .npy (one, sent as input `name`) or .npz file (each by its name); None otherwise."""
    if path.suffix not in (".npy", ".npz"):
        return None
    try:
        import numpy as np
    except ImportError:
        raise ValueError("--data-file: reading .npy and .npz files needs numpy (pip install numpy)") from None
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"--data-file {path}: {exc}") from None
    if path.suffix == ".npy":
        return {name: loaded}
    with loaded:
        return {key: loaded[key] for key in loaded.files}


def _priorities(priority: int | None, mix: str | None) -> tuple[tuple[int, float], ...]:
    if priority is not None:
        if priority < 0:
            raise ValueError(f"--priority must be 0 (the default level) or more, got {priority}")
        return ((priority, 1.0),)
    return () if mix is None else parse_priority_mix(mix)


def parse_priority_mix(text: str) -> tuple[tuple[int, float], ...]:
    """ "1:0.2,3:0.8" -> ((1, 0.2), (3, 0.8)); ValueError naming the syntax. Weights needn't add
    up to 1 (1:1,3:4 is the same mix); a level may appear once; 0 is the endpoint's default."""
    mix: dict[int, float] = {}
    for part in text.split(","):
        level, _, weight = part.strip().partition(":")
        try:
            pair = int(level), float(weight)
        except ValueError:
            pair = (-1, 0.0)
        if pair[0] < 0 or not math.isfinite(pair[1]) or pair[1] <= 0 or pair[0] in mix:
            raise ValueError(
                f"--priority-mix must be LEVEL:WEIGHT pairs separated by commas, each level once, levels >= 0 "
                f"and weights > 0 (e.g. 1:0.2,3:0.8), got {text!r}"
            )
        mix[pair[0]] = pair[1]
    return tuple(mix.items())


def _deadline(deadline_s: float | None) -> float | None:
    if deadline_s is not None and not (math.isfinite(deadline_s) and deadline_s > 0):
        raise ValueError(f"--deadline-s must be a number of seconds > 0, got {deadline_s}")
    return deadline_s


def main(args: argparse.Namespace) -> int:
    """Run the bench from parsed arguments: 0; 1 when a level failed (see `failures`) or the server is
    unreachable; 2 for bad arguments."""
    try:
        options = options_from(args)
    except (ValueError, OSError) as exc:
        print(f"servd bench: {exc}", file=sys.stderr)
        return 2
    try:
        levels = asyncio.run(run(options))
    except ServdError as exc:
        print(f"servd bench: {exc}", file=sys.stderr)
        return 1
    if args.json:
        header = {"url": options.url, "endpoint": options.endpoint, "transport": options.transport}
        run_info = {"duration_s": options.duration_s, "warmup_s": options.warmup_s, "requests": options.requests}
        scheduling = {"priorities": dict(options.priorities) or None, "deadline_s": options.deadline_s}
        print(json.dumps({**header, **run_info, **scheduling, "levels": levels}, indent=2))
    elif len(levels) == 1:
        print(summary_text(options.title, options.warmup_s, levels[0]))
    else:
        print(table_text(options.title, levels))
    problems = failures(levels)
    for problem in problems:
        print(f"servd bench: {problem}", file=sys.stderr)
    return 1 if problems else 0


def cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="servd bench", description=__doc__.split("\n")[0] if __doc__ else None)
    add_arguments(parser)
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(cli())
