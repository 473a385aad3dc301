"""Soak: a long mixed run against `servd run`; memory stays flat and nothing is lost (issue 7).

N websocket clients (plus one keep-alive HTTP client) send a mix of endpoints (echo, a failing
one, a slow one with timeouts, a streaming one, a batched one), cancel some requests, hang up
and reconnect now and then, while servd.yaml is rewritten with new limits every few seconds.
The server's RSS (from /proc/PID/status) is sampled all along and printed as it goes.

Nothing lost, two ways: every request on a connection that stayed open got exactly one
terminal message; and over all connections (those that hung up too), the daemon's own
counters (servd_requests_total + servd_rejected_total) equal the submits sent, with nothing
left queued or running at the end. No asserts: it prints PASS or FAIL against RSS growth under
10% after warm-up (the first 10% of requests) and 0 lost.

    python -m benchmarks.soak [--requests 200000] [--max-seconds 1800] [--clients 32] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import re
import statistics
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common

TARGET_RSS_GROWTH = 0.10
WARMUP_SHARE = 0.10
DEPTH = 4  # requests in flight per websocket client
HTTP_SHARE = 0.05  # of all requests, over HTTP
RELOAD_RESULTS = ("applied", "invalid", "failed")
ENDPOINT_WEIGHTS = {"echo": 50, "batched": 20, "slow": 15, "stream": 8, "flaky": 7}


# -- the daemon's config, rewritten with new limits during the run ---------------------------


def config_text(rng: random.Random) -> str:
    def queue(timeout: bool = False) -> str:
        size = rng.choice(["null", 200, 1000])
        per_client = rng.choice(["null", 100])
        timeout_s = rng.choice(["null", 0.5, 2]) if timeout else "null"
        return f"{{max_size: {size}, max_per_client: {per_client}, timeout_s: {timeout_s}}}"

    return f"""version: 1
server:
  host: {common.HOST}
  port: 0
  max_threads: 16
  log: {{format: json, level: warning}}
endpoints:
  echo:
    entrypoint: examples.echo:echo
    concurrency: {rng.randint(1, 4)}
    queue: {queue()}
  batched:
    entrypoint: examples.echo:echo_batch
    concurrency: {rng.randint(1, 2)}
    batch: {{max_size: {rng.choice([4, 8, 16])}, max_delay_ms: {rng.choice([0, 1, 2])}}}
    queue: {queue()}
  slow:
    entrypoint: examples.faults:sleep
    concurrency: {rng.randint(2, 4)}
    queue: {queue(timeout=True)}
  stream:
    entrypoint: examples.stream:words
    concurrency: {rng.randint(1, 3)}
    queue: {queue()}
  flaky:
    entrypoint: examples.faults:fail_on_odd
    concurrency: {rng.randint(1, 2)}
    queue: {queue()}
"""


def payload(rng: random.Random, endpoint: str, seq: int) -> Any:
    if endpoint == "slow":
        return {"s": rng.choice([0, 0.001, 0.005, 0.02])}
    if endpoint == "stream":
        return {"text": "one two three four", "delay_s": 0}
    if endpoint == "flaky":
        return seq % 10  # odd ones fail
    return {"seq": seq, "pad": "x" * rng.choice([10, 100, 1000])}


# -- a small websocket client on asyncio.Protocol ----------------------------------------------


class WsConn(asyncio.Protocol):
    """One websocket: sends text frames, answers pings, hands each text message to `on_text`."""

    def __init__(self, port: int, path: str, on_text: Callable[[bytes], None]) -> None:
        self.port = port
        self.path = path
        self.on_text = on_text
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET {self.path} HTTP/1.1\r\nHost: {common.HOST}:{self.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"connection lost during the handshake: {exc}"))
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        for opcode, payload in common.take_frames(self.buffer, self.opened):
            if opcode == 0x9:
                self.send(payload, 0xA)
            elif opcode == 0x8 and self.transport is not None:
                self.transport.close()
            elif opcode == 0x1:
                self.on_text(payload)

    def send(self, payload: bytes, opcode: int = 0x1) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(common._frame(payload, opcode))

    def close(self) -> None:
        """Start a clean close: a close frame after everything sent; the server answers and hangs up.

        Closing the socket at once instead would let the server's answers to it come back as a TCP
        reset, which discards whatever the server had not read yet: submits never seen, not lost.
        """
        self.send((1000).to_bytes(2, "big"), 0x8)

    async def closed(self, timeout_s: float = 10) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self.lost), timeout_s)
        except asyncio.TimeoutError:
            if self.transport is not None:
                self.transport.close()
            await self.lost


async def open_ws(port: int, path: str, on_text: Callable[[bytes], None]) -> WsConn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: WsConn(port, path, on_text), common.HOST, port)
    await asyncio.wait_for(conn.opened, 30)
    return conn


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Tally:
    """Counts from the client side; `sent` counts every submit, over every connection."""

    target: int
    deadline: float
    sent: int = 0
    http_sent: int = 0
    answered: int = 0
    duplicated: int = 0
    unexpected: int = 0
    lost: int = 0
    cancels: int = 0
    hangups: int = 0
    in_flight_at_hangup: int = 0
    answered_while_closing: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    def done(self) -> bool:
        return self.sent + self.http_sent >= self.target or time.monotonic() >= self.deadline


class Client:
    """One user over the run: several connections in turn, DEPTH requests in flight on each."""

    def __init__(self, tally: Tally, port: int, rng: random.Random, ids: Any) -> None:
        self.tally = tally
        self.port = port
        self.rng = rng
        self.ids = ids
        self.outstanding: dict[int, None] = {}
        self.abandoned: set[int] = set()  # in flight when this client hung up: an answer may still come
        self.ended: set[int] = set()
        self.wake = asyncio.Event()

    def on_text(self, payload: bytes) -> None:
        message = json.loads(payload)
        if message["type"] not in ("completed", "error"):
            return
        request_id = message["id"]
        if request_id in self.outstanding:
            del self.outstanding[request_id]
            self.ended.add(request_id)
            self.tally.answered += 1
            self.tally.outcomes[message["error"]["code"] if message["type"] == "error" else "completed"] += 1
            self.wake.set()
        elif request_id in self.abandoned:
            self.abandoned.discard(request_id)
            self.ended.add(request_id)
            self.tally.answered_while_closing += 1
        elif request_id in self.ended:
            self.tally.duplicated += 1
        else:
            self.tally.unexpected += 1

    async def run(self) -> None:
        tally, rng = self.tally, self.rng
        endpoints, weights = list(ENDPOINT_WEIGHTS), list(ENDPOINT_WEIGHTS.values())
        while not tally.done():
            conn = await open_ws(self.port, "/v1/ws", self.on_text)
            for _ in range(rng.randint(200, 3000)):
                if tally.done():
                    break
                while len(self.outstanding) >= DEPTH:
                    self.wake.clear()
                    await self.wake.wait()
                if self.outstanding and rng.random() < 0.04:
                    conn.send(b'{"type":"cancel","id":%d}' % rng.choice(list(self.outstanding)))
                    tally.cancels += 1
                    continue
                seq = next(self.ids)
                endpoint = rng.choices(endpoints, weights)[0]
                message = {
                    "type": "submit",
                    "id": seq,
                    "endpoint": endpoint,
                    "data": payload(rng, endpoint, seq),
                    "progress": rng.random() < 0.1,
                }
                self.outstanding[seq] = None
                tally.sent += 1
                conn.send(json.dumps(message).encode())
            if tally.done():
                await self._drain()
                conn.close()
                await conn.closed()
                return
            tally.hangups += 1
            tally.in_flight_at_hangup += len(self.outstanding)
            self.abandoned.update(self.outstanding)
            self.outstanding.clear()
            conn.close()
            await conn.closed()

    async def _drain(self) -> None:
        deadline = time.monotonic() + 60
        while self.outstanding and time.monotonic() < deadline:
            self.wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), 1)
        self.tally.lost += len(self.outstanding)


async def http_client(tally: Tally, port: int) -> None:
    """Keep-alive POSTs to echo, about HTTP_SHARE of all requests; each must get one 200 answer."""
    reader, writer = await asyncio.open_connection(common.HOST, port)
    try:
        while not tally.done():
            if tally.http_sent > HTTP_SHARE * (tally.sent + tally.http_sent):
                await asyncio.sleep(0.01)
                continue
            body = json.dumps({"data": {"http": tally.http_sent}}).encode()
            writer.write(
                b"POST /v1/endpoints/echo HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (common.HOST.encode(), port, len(body), body)
            )
            tally.http_sent += 1
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
            match = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
            await reader.readexactly(int(match.group(1)) if match else 0)
            if head.startswith(b"HTTP/1.1 200"):
                tally.answered += 1
                tally.outcomes["completed"] += 1
            else:
                tally.outcomes[f"http {head[9:12].decode()}"] += 1
                tally.answered += 1
    except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError):
        tally.lost += 1
    finally:
        writer.close()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def sampler(server: common.Server, tally: Tally, every_s: float, samples: list[dict[str, Any]]) -> None:
    started = time.monotonic()
    last_sent, last_t = 0, started
    while not tally.done():
        await asyncio.sleep(every_s)
        now = time.monotonic()
        sent = tally.sent + tally.http_sent
        sample = {
            "t": round(now - started, 1),
            "requests": sent,
            "rss_mb": round(rss_kb(server.pid) / 1024, 1),
            "rate": round((sent - last_sent) / (now - last_t)),
        }
        samples.append(sample)
        last_sent, last_t = sent, now
        print(
            f"  t={sample['t']:7.1f}s  requests {sent:>8}  {sample['rate']:>6}/s  rss {sample['rss_mb']:7.1f} MB",
            flush=True,
        )


async def reloader(config: Path, tally: Tally, every_s: float, seed: int) -> int:
    rng = random.Random(seed)
    writes = 0
    while not tally.done():
        await asyncio.sleep(every_s)
        staged = config.with_suffix(".new")
        staged.write_text(config_text(rng))
        staged.replace(config)  # atomically, as editors save: never a half-written file
        writes += 1
    return writes


def fetch(server: common.Server, path: str) -> bytes:
    with urllib.request.urlopen(f"http://{common.HOST}:{server.port}{path}", timeout=10) as reply:
        return bytes(reply.read())


def metric_sum(text: str, name: str, label: str = "") -> float:
    """Sum of a metric's series (those whose labels include `label`) in Prometheus text."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and label in line.split("}", 1)[0]
    )


async def settle(server: common.Server, timeout_s: float = 60) -> dict[str, Any]:
    """Wait until no endpoint has anything queued or running (calls included); return the stats."""
    deadline = time.monotonic() + timeout_s
    while True:
        listing = json.loads(fetch(server, "/v1/endpoints"))["endpoints"]
        busy = {e["name"]: e["stats"] for e in listing if any(e["stats"][k] for k in ("queued", "running", "workers"))}
        if not busy or time.monotonic() > deadline:
            return busy
        await asyncio.sleep(0.1)


async def soak(
    server: common.Server,
    config: Path,
    requests: int,
    max_s: float,
    clients: int,
    sample_s: float,
    reload_s: float,
    seed: int,
) -> dict[str, Any]:
    tally = Tally(requests, time.monotonic() + max_s)
    ids = iter(range(1, 10**12))
    samples: list[dict[str, Any]] = [
        {"t": 0.0, "requests": 0, "rss_mb": round(rss_kb(server.pid) / 1024, 1), "rate": 0}
    ]
    users = [Client(tally, server.port, random.Random(seed + n), ids) for n in range(clients)]
    started = time.monotonic()
    results = await asyncio.gather(
        reloader(config, tally, reload_s, seed),
        sampler(server, tally, sample_s, samples),
        http_client(tally, server.port),
        *(user.run() for user in users),
    )
    elapsed = time.monotonic() - started
    busy = await settle(server)
    listing = json.loads(fetch(server, "/v1/endpoints"))["endpoints"]
    metrics = fetch(server, "/metrics").decode()
    accounted = metric_sum(metrics, "servd_requests_total") + metric_sum(metrics, "servd_rejected_total")
    samples.append(
        {
            "t": round(elapsed, 1),
            "requests": tally.sent + tally.http_sent,
            "rss_mb": round(rss_kb(server.pid) / 1024, 1),
            "rate": 0,
        }
    )
    missing = int(tally.sent + tally.http_sent - accounted)
    return {
        "elapsed_s": round(elapsed, 1),
        "requests": tally.sent + tally.http_sent,
        "websocket": tally.sent,
        "http": tally.http_sent,
        "answered_on_open_connections": tally.answered,
        "in_flight_at_hangup": tally.in_flight_at_hangup,
        "answered_while_closing": tally.answered_while_closing,
        "hangups": tally.hangups,
        "cancels_sent": tally.cancels,
        "outcomes": dict(tally.outcomes.most_common()),
        "duplicated": tally.duplicated,
        "unexpected": tally.unexpected,
        "unanswered_on_open_connections": tally.lost,
        "daemon_accounted": int(accounted),
        "daemon_missing": missing,
        "left_busy": busy,
        "lined_up": {e["name"]: e["stats"]["lined_up"] for e in listing},
        "lost": tally.lost + abs(missing) + tally.unexpected + sum(s["queued"] + s["running"] for s in busy.values()),
        "reload_writes": results[0],
        "reloads": {r: metric_sum(metrics, "servd_reloads_total", f'result="{r}"') for r in RELOAD_RESULTS},
        "samples": samples,
    }


def rss_growth(samples: list[dict[str, Any]], total: int) -> tuple[float | None, float | None, float | None]:
    """(RSS after warm-up, at the end, growth): medians of samples, so one GC spike doesn't decide it."""
    after = [s["rss_mb"] for s in samples if WARMUP_SHARE * total <= s["requests"] <= 2 * WARMUP_SHARE * total]
    if not after:
        after = [s["rss_mb"] for s in samples if s["requests"] >= WARMUP_SHARE * total][:1]
    end = [s["rss_mb"] for s in samples[-3:]]
    if not after or not end:
        return None, None, None
    base, final = statistics.median(after), statistics.median(end)
    return base, final, final / base - 1


def run(
    *,
    requests: int = 200_000,
    max_seconds: float = 1800,
    clients: int = 32,
    sample_s: float = 2.0,
    reload_s: float = 3.0,
    seed: int = 7,
) -> dict[str, Any]:
    info = common.machine_info()
    common.pin_self(common.CLIENT_CORE)
    common.print_machine(info)
    print(
        f"soak: {requests} requests (at most {max_seconds:.0f} s), {clients} websocket clients x {DEPTH} in flight"
        f" + HTTP ~{HTTP_SHARE:.0%}; config rewritten every {reload_s} s",
        flush=True,
    )
    with common.workdir() as work, common.servers() as running:
        server = common.start_servd("soak", config_text(random.Random(seed)), work)
        running.append(server)
        config = work / "config" / "soak" / "servd.yaml"
        outcome = asyncio.run(soak(server, config, requests, max_seconds, clients, sample_s, reload_s, seed))
        log_tail = (work / "log" / "soak.log").read_text(errors="replace")[-1500:]
    base, final, growth = rss_growth(outcome["samples"], outcome["requests"])
    outcome.update({"rss_after_warmup_mb": base, "rss_end_mb": final, "rss_growth": growth})
    result: dict[str, Any] = {
        "benchmark": "soak",
        "machine": info | {"loadavg_at_end": common.loadavg()},
        "settings": {
            "requests": requests,
            "max_seconds": max_seconds,
            "clients": clients,
            "depth": DEPTH,
            "reload_s": reload_s,
            "sample_s": sample_s,
            "seed": seed,
            "weights": ENDPOINT_WEIGHTS,
        },
        "results": outcome,
    }
    result["summary"] = [
        common.summary_row("soak RSS growth after warm-up", growth, TARGET_RSS_GROWTH, higher=False),
        common.summary_row("soak requests lost", outcome["lost"], 1, higher=False),
        common.summary_row("soak terminals duplicated", outcome["duplicated"], 1, higher=False),
    ]
    print_report(result, log_tail)
    return result


def print_report(result: dict[str, Any], log_tail: str) -> None:
    r = result["results"]
    samples = r["samples"]
    step = max(1, len(samples) // 25)
    print("\nRSS over time:")
    rows = [[s["t"], s["requests"], s["rate"], s["rss_mb"]] for s in samples[::step]] + [
        [samples[-1]["t"], samples[-1]["requests"], samples[-1]["rate"], samples[-1]["rss_mb"]]
    ]
    print(common.table(["t s", "requests", "req/s", "rss MB"], rows))
    print(
        f"\n{r['requests']} requests in {r['elapsed_s']} s ({r['websocket']} websocket, {r['http']} HTTP); "
        f"{r['hangups']} hang-ups with {r['in_flight_at_hangup']} requests in flight "
        f"({r['answered_while_closing']} answered while closing); "
        f"{r['cancels_sent']} cancels"
    )
    print(f"outcomes on open connections: {r['outcomes']}")
    print(f"reloads: {r['reload_writes']} writes, {r['reloads']}")
    print(f"requests lined up behind a running call, by endpoint: {r['lined_up']}")
    print(
        f"daemon accounted {r['daemon_accounted']} of {r['requests']} (missing {r['daemon_missing']}); "
        f"left busy: {r['left_busy'] or 'nothing'}"
    )
    print(
        f"unanswered {r['unanswered_on_open_connections']}, duplicated {r['duplicated']}, unexpected {r['unexpected']}"
    )
    growth = r["rss_growth"]
    rss_ok = growth is not None and growth < TARGET_RSS_GROWTH
    shown = "-" if growth is None else f"{growth:+.1%}"
    print(
        f"RSS after warm-up {r['rss_after_warmup_mb']} MB, at the end {r['rss_end_mb']} MB: growth {shown}"
        f" -> {'PASS' if rss_ok else 'FAIL'} (target < 10%)"
    )
    lost_ok = r["lost"] == 0 and r["duplicated"] == 0
    print(f"lost {r['lost']}, duplicated {r['duplicated']} -> {'PASS' if lost_ok else 'FAIL'} (target 0)")
    if not lost_ok and log_tail:
        print(f"server log tail:\n{log_tail}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="20,000 requests: a smoke run")
    parser.add_argument("--requests", type=int, default=200_000, help="requests in all (default 200,000)")
    parser.add_argument("--max-seconds", type=float, default=1800, help="stop after this long whatever the count")
    parser.add_argument("--clients", type=int, default=32, help="websocket clients")
    parser.add_argument("--sample", type=float, default=2.0, help="seconds between RSS samples")
    parser.add_argument("--reload-every", type=float, default=3.0, help="seconds between config rewrites")
    parser.add_argument("--seed", type=int, default=7)


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return run(
        requests=20_000 if args.quick else args.requests,
        max_seconds=args.max_seconds,
        clients=args.clients,
        sample_s=1.0 if args.quick else args.sample,
        reload_s=args.reload_every,
        seed=args.seed,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.splitlines()[0])
    add_arguments(parser)
    result = run_from_args(parser.parse_args(argv))
    print(f"written: {common.write_json('soak', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
