"""Floods: idle and half-open connections, server.max_connections, rapid submitters, open-files limits (issue 7).

Counts here are bounded for CI (hundreds, not the 10,000 of benchmarks/idle.py), and scaled
down further when the open-files limit is low. Idle clients are raw asyncio sockets on the test's
loop: they cost a file descriptor and nothing else, as a real idle client does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from tests.harness import Running, WsClient, eventually, eventually_sync, serve
from tests.procs import http, running
from tests.test_fuzz import Ledger
from tests.test_ws import Gate

HOLD = Gate()  # tests.test_floods:HOLD
IDLE_CLIENTS = 500
CONNECT_CHUNK = 32  # at once: stays under the listen backlog

CONFIG = """
version: 1
server:
  max_connections: {max_connections}
  drain_timeout_s: 5
endpoints:
  echo:
    entrypoint: examples.echo:echo
    concurrency: 2
"""

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def upgrade_request(port: int, path: str = "/v1/ws") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def silent_tcp(port: int) -> Conn:
    """A TCP connection that never sends a byte."""
    return await asyncio.open_connection("127.0.0.1", port)


async def idle_websocket(port: int) -> Conn:
    """A websocket that completes its handshake, then never sends (it doesn't even answer pings)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(upgrade_request(port))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def open_many(count: int, opener: Any, port: int) -> list[Conn]:
    conns: list[Conn] = []
    for start in range(0, count, CONNECT_CHUNK):
        chunk = min(CONNECT_CHUNK, count - start)
        conns += await asyncio.gather(*(opener(port) for _ in range(chunk)))
    return conns


def close_all(conns: list[Conn]) -> None:
    for _, writer in conns:
        writer.close()


def affordable(wanted: int) -> int:
    """Connections this process can hold (each costs two descriptors here: client and server side)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(10, min(wanted, (soft - 300) // 2))


async def served(d: Running, client: WsClient, tag: str, count: int = 20, over_http: bool = True) -> None:
    """`count` echo requests one after another over the websocket, and one over HTTP, all answered."""
    for i in range(count):
        await client.submit(f"{tag}-{i}", "echo", i, progress=False)
        assert (await client.terminal(f"{tag}-{i}"))["data"] == i
    if over_http:
        assert (await d.post("echo", tag)).json()["data"] == tag


# -- idle and half-open connections ------------------------------------------------------------


async def test_hundreds_of_idle_connections_leave_an_active_client_served(tmp_path):
    """Hundreds of connections that never send (half bare TCP, half websockets past the handshake)
    are held open, and meanwhile an active client's requests are all served, over websocket and HTTP."""
    async with serve(tmp_path, CONFIG.format(max_connections=10000)) as d:
        count = affordable(IDLE_CLIENTS) // 2
        active = await d.ws()
        tcp = await open_many(count, silent_tcp, d.port)
        sockets = await open_many(count, idle_websocket, d.port)
        try:
            await eventually(lambda: len(d.daemon.connections) == count + 1, "every idle websocket to be open")
            await served(d, active, "during")
            assert len(d.daemon.connections) == count + 1, "no idle client was dropped"
        finally:
            close_all(tcp + sockets)
        await eventually(lambda: len(d.daemon.connections) == 1, "the idle websockets to be gone")
        await served(d, active, "after", count=2)


async def test_half_open_and_half_sent_requests_block_nobody(tmp_path):
    """A bare TCP connect, a request line cut off mid-headers, an upgrade cut off mid-headers, and a
    websocket frame cut off mid-payload, all left silent: other clients are served, and shutdown
    still completes promptly."""
    async with serve(tmp_path, CONFIG.format(max_connections=100)) as d:
        port = d.port
        stalled = [await silent_tcp(port) for _ in range(3)]
        for partial in (b"POST /v1/endpoints/echo HTTP/1.1\r\nHost: x\r\nContent-Le", upgrade_request(port)[:60]):
            reader, writer = await silent_tcp(port)
            writer.write(partial)
            stalled.append((reader, writer))
        reader, writer = await idle_websocket(port)
        writer.write(bytes([0x81, 0x80 | 126]) + (1000).to_bytes(2, "big") + b"\0\0\0\0" + b"{" * 10)
        stalled.append((reader, writer))
        body_cut = await silent_tcp(port)
        body_cut[1].write(b'POST /v1/endpoints/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"data":')
        stalled.append(body_cut)
        try:
            active = await d.ws()
            await served(d, active, "beside-stalled")
            await asyncio.wait_for(d.daemon.shutdown(), 30)
        finally:
            close_all(stalled)


SHORT_PINGS = """
version: 1
server:
  ping_interval_s: 0.5
  drain_timeout_s: 5
endpoints:
  echo:
    entrypoint: examples.echo:echo
"""


async def test_connections_that_never_finish_a_request_are_closed_in_bounded_time(tmp_path):
    """A bare TCP connect, a request cut off mid-headers and a keep-alive connection left idle after
    its answer each hold a file descriptor that server.max_connections doesn't count; the daemon
    closes them within a couple of ping intervals, as it drops websockets that stop answering pings,
    so silent connections can't pile up until it runs out of descriptors. Regression: the listener kept
    tornado's default idle_connection_timeout (3600 s, which is also its header timeout)."""
    async with serve(tmp_path, SHORT_PINGS) as d:
        port = d.port
        bare = await silent_tcp(port)
        partial = await silent_tcp(port)
        partial[1].write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        kept = await silent_tcp(port)
        kept[1].write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(kept[0].readuntil(b"\r\n\r\n"), 20)
        assert head.startswith(b"HTTP/1.1 200")
        try:
            for name, (reader, _) in {
                "bare connect": bare,
                "partial headers": partial,
                "idle keep-alive": kept,
            }.items():
                try:
                    left = await asyncio.wait_for(reader.read(), 10)
                except asyncio.TimeoutError:
                    raise AssertionError(f"the {name} connection was still open after 10 s") from None
                assert b"HTTP/1.1 200" not in left
        finally:
            close_all([bare, partial, kept])


# -- server.max_connections ----------------------------------------------------------------------


async def test_at_max_connections_a_new_connection_gets_503_until_some_close(tmp_path):
    """With server.max_connections websockets open, the next upgrade, and an HTTP request too (every
    connection holds a file descriptor, so HTTP ones count: issue 25), are refused with HTTP 503 and
    an unavailable error naming the setting, counted in /metrics; once two close, two new ones are
    accepted and served."""
    async with serve(tmp_path, CONFIG.format(max_connections=5)) as d:
        clients = [await d.ws() for _ in range(5)]
        with pytest.raises(HTTPClientError) as refused:
            await d.ws()
        assert refused.value.code == 503
        assert refused.value.response is not None
        error = json.loads(refused.value.response.body)["error"]
        assert error["code"] == "unavailable" and "server.max_connections=5" in error["message"]
        http_refused = await d.post("echo", "http counts too")
        assert http_refused.status == 503 and b"server.max_connections=5" in http_refused.body
        metrics = d.daemon.metrics.render().decode()
        assert 'servd_rejected_total{endpoint="",reason="unavailable"} 2.0' in metrics
        for client in clients[:2]:
            client.close()
        await eventually(lambda: len(d.daemon.connections) == 3, "two connections to close")
        assert (await d.post("echo", "room again")).json()["data"] == "room again"
        for client in [await d.ws(), await d.ws()]:
            await served(d, client, f"new-{id(client)}", count=1, over_http=False)
        with pytest.raises(HTTPClientError) as again:
            await d.ws()
        assert again.value.code == 503
        for client in clients[2:]:
            await served(d, client, f"old-{id(client)}", count=1, over_http=False)


RATE = """
version: 1
server:
  tokens_file: tokens.txt
  drain_timeout_s: 5
endpoints:
  held:
    entrypoint: tests.test_floods:HOLD
    concurrency: 1
    queue: {max_size: 10, max_per_client: 3}
"""


async def test_rapid_submitters_hit_client_limit_and_queue_full_and_every_admitted_request_ends_once(tmp_path):
    """Clients (one token each) fire 30 submits apiece without waiting at a stuck endpoint, first one
    alone, then five at once: no client holds more than queue.max_per_client waiting, the queue never
    holds more than queue.max_size, the rest are refused at once with client_limit or queue_full, and
    once the endpoint moves every admitted request completes with exactly one terminal."""
    tokens = [f"token-{i}" for i in range(6)]
    (tmp_path / "tokens.txt").write_text("\n".join(tokens) + "\n")
    async with serve(tmp_path, RATE) as d:
        clients = [await d.ws("/v1/ws", headers={"Authorization": f"Bearer {t}"}) for t in tokens]
        endpoint = d.daemon.endpoints["held"]
        with HOLD.shut():
            for group in (clients[:1], clients[1:]):
                await asyncio.gather(*(fire(c, clients.index(c)) for c in group))
                for client in group:
                    await client.wait_for(lambda _, c=client: answered(c) == 30)
            assert len(endpoint.queue) == 10
            ledgers = [ledger_of(c) for c in clients]
            assert ledgers[0].admitted == 1 + 3, "one running and max_per_client waiting"
            assert all(ledger.admitted <= 3 for ledger in ledgers[1:]), [ledger.admitted for ledger in ledgers]
            assert sum(ledger.admitted for ledger in ledgers) == 10 + 1
            codes = [m["error"]["code"] for c in clients for m in c.messages if m["type"] == "error"]
            assert set(codes) == {"client_limit", "queue_full"} and len(codes) == 6 * 30 - 11, codes
        for client in clients:
            await client.wait_for(lambda _, c=client: not ledger_of(c).open)
        ledgers = [ledger_of(c) for c in clients]
        assert all(ledger.problems == [] for ledger in ledgers)
        assert all(ledger.outcomes.keys() <= {"completed"} for ledger in ledgers)
        assert sum(ledger.ended for ledger in ledgers) == len(HOLD.calls) == 11


async def fire(client: WsClient, n: int) -> None:
    for i in range(30):
        await client.submit(f"{n}-{i}", "held", i)


def ledger_of(client: WsClient) -> Ledger:
    ledger = Ledger()
    for message in client.messages:
        ledger.feed(message)
    return ledger


def answered(client: WsClient) -> int:
    return ledger_of(client).answers


# -- open-files limit --------------------------------------------------------------------------


async def test_start_raises_the_open_files_soft_limit_to_the_hard_limit(tmp_path):
    """After start, the daemon's process may open as many files as its hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with lowered_soft_limit(min(soft, 512)):
        async with serve(tmp_path, CONFIG.format(max_connections=100)):
            soft_after, hard_after = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard_after == hard
    if hard == resource.RLIM_INFINITY:
        assert soft_after >= 100 + 1024
    else:
        assert soft_after == hard


@contextmanager
def lowered_soft_limit(soft: int) -> Iterator[None]:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


async def test_a_hard_limit_below_max_connections_is_warned_about_at_start(tmp_path):
    """max_connections above what the open-files hard limit allows: the daemon starts, and logs an
    "open files limit" warning naming both numbers."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no finite hard limit on open files here")
    async with serve(tmp_path, CONFIG.format(max_connections=hard + 1000)) as d:
        warnings = [e for e in d.log_events() if e["event"] == "open files limit"]
        assert len(warnings) == 1 and warnings[0]["level"] == "warning"
        assert f"server.max_connections={hard + 1000}" in warnings[0]["detail"]
        assert str(hard) in warnings[0]["detail"]
        assert (await d.post("echo", 1)).status == 200


async def test_no_open_files_warning_when_the_limit_is_enough(tmp_path):
    """With max_connections well under the open-files limit, nothing is warned about."""
    async with serve(tmp_path, CONFIG.format(max_connections=50)) as d:
        assert [e for e in d.log_events() if e["event"] == "open files limit"] == []


FLOOD = """\
version: 1
server:
  max_connections: 1000
endpoints:
  echo:
    entrypoint: examples.echo:echo
"""


def test_running_out_of_file_descriptors_neither_spins_nor_floods_the_log(tmp_path):
    """`servd run` under a hard limit of 128 open files, flooded by 200 silent TCP connections (with
    max_connections above what the limit allows): the daemon must not spin on accept() logging a traceback per loop
    iteration; once the flood goes it serves again. (Regression: tornado's accept handler raised
    EMFILE on every iteration while the listening socket stays readable.)"""
    limit = 128

    def lower_the_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    with running(tmp_path, FLOOD, preexec_fn=lower_the_limit) as daemon:
        flood: list[socket.socket] = []
        try:
            for _ in range(200):
                flood.append(socket.create_connection(("127.0.0.1", daemon.port), timeout=10))
            marker = f"http-after-flood-{os.getpid()}"
            before = daemon.log.read_bytes().count(b"Traceback")
            cpu_before = proc_cpu_s(daemon.proc.pid)
            lines = sample_growth(daemon.log, seconds=1.5)
            spent = proc_cpu_s(daemon.proc.pid) - cpu_before
            for sock in flood:
                sock.close()
            flood.clear()
            reply = eventually_sync(lambda: post_ok(daemon.port, marker), "a request to be served after the flood")
            assert reply.body["data"] == marker
            assert lines < 50, (
                f"{lines} log lines in 1.5 s of fd exhaustion ({spent:.2f} s cpu); tracebacks before: {before}"
            )
        finally:
            for sock in flood:
                sock.close()


def post_ok(port: int, data: str) -> Any:
    with suppress(OSError):
        reply = http(port, "POST", "/v1/endpoints/echo", {"data": data}, timeout=5)
        return reply if reply.status == 200 else None
    return None


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sample_growth(log: Path, seconds: float) -> int:
    """Lines the log grew by over `seconds` (a wall-clock window: what is measured is a rate)."""
    before = log.read_bytes().count(b"\n")
    time.sleep(seconds)
    return log.read_bytes().count(b"\n") - before
