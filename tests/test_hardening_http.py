"""HTTP hardening (issue 25): nothing read or held before it is checked, every body bounded in time,
every stream bounded in what waits unread, tokens only where they belong.

Attacks are sent with raw sockets (client libraries won't send a body shorter than its
Content-Length, or never read an answer). What is measured is what a user of the server sees: the
answer and when it came, whether other clients are served meanwhile, and the daemon's memory
(RSS of a `servd run` process, read from /proc).
"""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from tests.harness import eventually, eventually_sync, serve
from tests.procs import http, running
from tests.test_floods import affordable, close_all, silent_tcp, upgrade_request

MIB = 1024 * 1024
ROUTES = ("/v1/endpoints/echo", "/v2/models/echo/infer", "/v1/chat/completions")
PIECE = "x" * (256 * 1024)
PIECES = 1200  # 300 MB if nothing stopped it


def firehose(data: Any) -> Iterator[str]:
    """A generator that yields a quarter MiB at a time, as fast as it can (tests.test_hardening_http:firehose)."""
    for _ in range(PIECES):
        yield PIECE


TOKENS = """\
version: 1
server:
  tokens_file: tokens.txt
endpoints:
  echo:
    entrypoint: examples.echo:echo
  chatty:
    entrypoint: examples.chat:chat
    openai: {}
"""

OPEN = """\
version: 1
server:
  body_timeout_s: 1
endpoints:
  echo:
    entrypoint: examples.echo:echo
  chatty:
    entrypoint: examples.chat:chat
    openai: {}
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def post_head(path: str, length: int, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", f"Content-Length: {length}"]
    lines += [f"{key.replace('_', '-')}: {value}" for key, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_head(sock: socket.socket, timeout: float) -> bytes:
    """The answer's status line and headers, or AssertionError if none comes within `timeout`."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raise AssertionError(f"no answer within {timeout} s (got {data[:200]!r})") from None
    return data


async def read_to_end(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything until the server closes, or AssertionError if it hasn't within `timeout`."""
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"the connection was still open after {timeout} s") from None


# -- auth before body ---------------------------------------------------------------------------


def test_posts_without_a_token_are_refused_at_their_headers_and_their_bodies_never_held(tmp_path):
    """20 connections without a token, each announcing a 16 MiB body on one of the three POST
    routes, get 401 (with WWW-Authenticate) as soon as their headers are in, before sending any of
    it; then each sends all but one byte of its body: the daemon drops it as it comes, so its RSS
    stays flat (it held +330 MB before), and a client with a token is served throughout."""
    (tmp_path / "tokens.txt").write_text("alpha-secret\n")
    with running(tmp_path, TOKENS) as daemon:
        pid = daemon.proc.pid
        before = rss_mb(pid)
        held, peak, slowest = [], before, 0.0
        try:
            for i in range(20):
                sock = socket.create_connection(("127.0.0.1", daemon.port), timeout=10)
                held.append(sock)
                sock.sendall(post_head(ROUTES[i % 3], 16 * MIB))
                started = time.monotonic()
                head = read_head(sock, 5)
                slowest = max(slowest, time.monotonic() - started)
                assert head.startswith(b"HTTP/1.1 401"), head
                assert b"www-authenticate: bearer" in head.lower(), head
                with suppress(OSError):  # the daemon may close once it has dropped enough
                    sock.sendall(b" " * (16 * MIB - 1))
                peak = max(peak, rss_mb(pid))
            assert authorized_echo(daemon.port)["data"] == "served"
        finally:
            for sock in held:
                sock.close()
        print(f"RSS {before:.1f} MB -> peak {peak:.1f} MB; slowest refusal {slowest * 1000:.1f} ms")
        assert slowest < 2.0
        assert peak - before < 40, f"RSS grew {peak - before:.1f} MB while refused bodies arrived"


def authorized_echo(port: int) -> Any:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    with sock:
        body = b'{"data": "served"}'
        sock.sendall(post_head("/v1/endpoints/echo", len(body), Authorization="Bearer alpha-secret") + body)
        head = read_head(sock, 10)
        assert head.startswith(b"HTTP/1.1 200"), head
        return json.loads(head.split(b"\r\n\r\n", 1)[1])


async def test_an_oversized_body_or_an_unknown_endpoint_is_refused_at_the_headers(tmp_path):
    """A Content-Length over server.max_message_bytes gets 413, and an endpoint or model that doesn't
    exist 404, each as soon as the headers are in (no byte of the body sent), in each protocol's shape."""
    async with serve(tmp_path, OPEN) as d:
        cases = [
            ("/v1/endpoints/echo", 64 * MIB, b"413", b'"code":"too_large"'),
            ("/v2/models/echo/infer", 64 * MIB, b"413", b'"error":"body is'),
            ("/v1/endpoints/nope", 100, b"404", b'"code":"unknown_endpoint"'),
            ("/v2/models/nope/infer", 100, b"404", b"no model 'nope'"),
        ]
        for path, length, status, shape in cases:
            reader, writer = await asyncio.open_connection("127.0.0.1", d.port)
            writer.write(post_head(path, length))
            answer = await asyncio.wait_for(reader.read(65536), 5)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 " + status) and shape in answer, (path, answer)


async def test_a_websocket_handshake_with_a_body_is_refused_before_the_body_is_read(tmp_path):
    """A GET to the websocket route announcing a 16 MiB body gets 400 at its headers: a handshake has
    no body, and Tornado would otherwise buffer up to twice max_message_bytes of it before the
    handshake's checks (token included) run."""
    async with serve(tmp_path, OPEN) as d:
        reader, writer = await asyncio.open_connection("127.0.0.1", d.port)
        writer.write(upgrade_request(d.port).replace(b"\r\n\r\n", f"\r\nContent-Length: {16 * MIB}\r\n\r\n".encode()))
        answer = await asyncio.wait_for(reader.read(65536), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 400") and b"a websocket handshake has no body" in answer, answer


# -- body timeout ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ROUTES)
async def test_a_body_that_stops_or_trickles_is_answered_408_at_body_timeout_s(tmp_path, path):
    """A body that stops after one byte of its Content-Length, and one that trickles in a byte every
    0.1 s, are each answered 408 at server.body_timeout_s (1 s here) and closed, and counted as
    servd_rejected_total{reason="timeout"}. Regression: the first stayed open indefinitely."""
    async with serve(tmp_path, OPEN) as d:
        stalled = await asyncio.open_connection("127.0.0.1", d.port)
        trickled = await asyncio.open_connection("127.0.0.1", d.port)
        started = time.monotonic()
        stalled[1].write(post_head(path, 100) + b"{")
        trickled[1].write(post_head(path, 100_000))
        trickle = asyncio.ensure_future(_trickle(trickled[1]))
        try:
            for reader, _ in (stalled, trickled):
                answer = await read_to_end(reader, 6)
                assert answer.startswith(b"HTTP/1.1 408"), answer
                assert b"server.body_timeout_s=1" in answer
        finally:
            trickle.cancel()
            close_all([stalled, trickled])
        took = time.monotonic() - started
        assert 0.9 < took < 4, took
        endpoint = "" if "chat" in path else "echo"
        metrics = d.daemon.metrics.render().decode()
        assert f'servd_rejected_total{{endpoint="{endpoint}",reason="timeout"}} 2.0' in metrics


async def _trickle(writer: asyncio.StreamWriter) -> None:
    with suppress(ConnectionError):
        for _ in range(200):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.1)


async def test_hundreds_of_stalled_bodies_are_closed_at_their_bound_and_others_are_served_meanwhile(tmp_path):
    """300 connections that each send headers and one byte of a 100-byte body: /readyz and an echo
    request still answer at once beside them, and every one of them is answered and closed at
    body_timeout_s. Regression: they stayed open, and with the open-files limit at 400 such
    sockets made /readyz unreachable for 33 s and more."""
    async with serve(tmp_path, OPEN) as d:
        count = affordable(300)
        stalled = [await silent_tcp(d.port) for _ in range(count)]
        for i, (_, writer) in enumerate(stalled):
            writer.write(post_head(ROUTES[i % 3], 100) + b"{")
        try:
            started = time.monotonic()
            assert (await d.http("GET", "/readyz")).status == 200
            assert (await d.post("echo", "beside")).json()["data"] == "beside"
            served_in = time.monotonic() - started
            answers = await asyncio.gather(*(read_to_end(reader, 8) for reader, _ in stalled))
        finally:
            close_all(stalled)
        assert served_in < 0.5, served_in
        assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers)
        await eventually(lambda: d.service.front.open_connections() == 0, "every stalled connection to close")


# -- unread output --------------------------------------------------------------------------------

FIREHOSE = """\
version: 1
server:
  max_client_buffer_bytes: 1048576
endpoints:
  firehose:
    entrypoint: tests.test_hardening_http:firehose
  firehose-chat:
    entrypoint: tests.test_hardening_http:firehose
    openai: {model: firehose}
"""


@pytest.mark.parametrize(
    ("path", "body", "endpoint"),
    [
        ("/v1/endpoints/firehose", {"data": 1}, "firehose"),
        ("/v1/chat/completions", {"model": "firehose", "stream": True, "messages": [{"role": "user", "content": "go"}]},
         "firehose-chat"),
    ],
)  # fmt: skip
def test_a_stream_reader_that_never_reads_is_dropped_and_its_request_cancelled(tmp_path, path, body, endpoint):
    """A client that asks for a stream (servd's SSE, OpenAI's `stream: true`) from a generator
    yielding 300 MB as fast as it can, and never reads: once more than server.max_client_buffer_bytes
    waits unread it is cut off ("slow reader disconnected"), its request ends `cancelled` (counted in
    servd_requests_total), and the daemon's RSS stays bounded. Regression: +510 MB for one request."""
    with running(tmp_path, FIREHOSE) as daemon:
        pid = daemon.proc.pid
        before = rss_mb(pid)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", daemon.port))
        raw = json.dumps(body).encode()
        peak = before
        try:
            sock.sendall(post_head(path, len(raw), Accept="text/event-stream") + raw)

            def dropped() -> bool:
                nonlocal peak
                peak = max(peak, rss_mb(pid))
                return any(e["event"] == "slow reader disconnected" for e in daemon.log_events())

            eventually_sync(dropped, "the reader that never reads to be dropped")
        finally:
            sock.close()
        metrics = http(daemon.port, "GET", "/metrics").body
        assert f'servd_requests_total{{endpoint="{endpoint}",outcome="cancelled"}} 1.0' in metrics
        print(f"RSS {before:.1f} MB -> peak {peak:.1f} MB")
        assert peak - before < 100, f"RSS grew {peak - before:.1f} MB for one unread stream"


# -- tokens, frames, memory -------------------------------------------------------------------------


async def test_a_token_in_the_query_string_is_refused_on_http_and_kept_for_the_websocket(tmp_path):
    """?token= is only for the websocket handshake (browsers can't set its headers): on HTTP routes
    it is refused with 401, telling the client to use the Authorization header, since addresses end
    up in proxies' logs; the websocket handshake still takes it."""
    (tmp_path / "tokens.txt").write_text("alpha-secret\n")
    async with serve(tmp_path, TOKENS) as d:
        for method, path in (("GET", "/v1/status"), ("GET", "/metrics"), ("POST", "/v1/endpoints/echo")):
            reply = await d.http(method, f"{path}?token=alpha-secret", {"data": 1} if method == "POST" else None)
            assert reply.status == 401, (path, reply.status)
            assert "Authorization" in reply.json()["error"]["message"]
            assert reply.headers["WWW-Authenticate"] == 'Bearer realm="servd"'
        ws = await d.ws("/v1/ws?token=alpha-secret")
        await ws.submit(1, "echo", "through the socket")
        assert (await ws.terminal(1))["data"] == "through the socket"


async def test_an_unmasked_client_frame_closes_the_websocket_with_1002(tmp_path):
    """RFC 6455 5.1: a server must close the connection on a client frame that is not masked. servd
    answers a close frame with 1002 (protocol error) and closes; the frame is not served."""
    async with serve(tmp_path, OPEN) as d:
        reader, writer = await asyncio.open_connection("127.0.0.1", d.port)
        writer.write(upgrade_request(d.port))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101")
        message = json.dumps({"type": "submit", "id": 1, "endpoint": "echo", "data": 1}).encode()
        writer.write(bytes([0x81, len(message)]) + message)  # FIN + text, no mask bit
        rest = await read_to_end(reader, 5)
        writer.close()
        assert rest[:1] == b"\x88", rest  # a close frame, and nothing served before it
        assert int.from_bytes(rest[2:4], "big") == 1002


FLOOD_ROUNDS = 6
FLOOD_CONNECTIONS = 400


def test_memory_an_unauthenticated_flood_leaves_behind_is_given_back(tmp_path):
    """Rounds of 400 connections without a token, each posting a 64 KiB body: after a round ends
    the daemon's RSS comes back to within 1.5 MB of where it was after the first (which warms the
    allocator; the median round is judged, none may pass 6 MB), rather than growing round after
    round until the collector happens to run."""
    (tmp_path / "tokens.txt").write_text("alpha-secret\n")
    with running(tmp_path, TOKENS) as daemon:
        pid = daemon.proc.pid
        after: list[float] = []
        for _ in range(FLOOD_ROUNDS):
            asyncio.run(_flood(daemon.port))
            time.sleep(1.5)  # the collection after a burst comes within a second or so
            settled = rss_mb(pid)
            deadline = time.monotonic() + 6  # on a busy machine it may come later: wait, bounded
            while after and settled - after[0] >= 1.5 and time.monotonic() < deadline:
                time.sleep(0.25)
                settled = rss_mb(pid)
            after.append(settled)
        print("RSS after each round (MB):", [round(r, 1) for r in after])
        # Without the collection after a burst RSS climbs about 0.7 MB a round; one round's passing
        # spike (the allocator, a log buffer) on a busy machine is not a leak, so the median judges.
        assert statistics.median(after[1:]) - after[0] < 1.5, after
        assert max(after[1:]) - after[0] < 6, after


async def _flood(port: int) -> None:
    body = b" " * (64 * 1024)
    for start in range(0, FLOOD_CONNECTIONS, 50):
        conns = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(50)))
        for _, writer in conns:
            writer.write(post_head(ROUTES[start % 3], len(body)) + body)
        for reader, writer in conns:
            with suppress(ConnectionError, asyncio.TimeoutError):
                await asyncio.wait_for(reader.read(65536), 10)
            writer.close()
    await asyncio.sleep(0)
