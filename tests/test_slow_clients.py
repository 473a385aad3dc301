"""Clients that stop reading or stop answering are cut off without disturbing anyone else.

These use a raw TCP socket that speaks just enough websocket to submit requests and then never
reads, which no websocket library does on its own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct

from tests.harness import eventually, serve

CONFIG = """
version: 1
server:
  max_client_buffer_bytes: 65536
  ping_interval_s: {ping}
endpoints:
  echo:
    entrypoint: examples.echo:echo
    concurrency: 2
"""


async def raw_websocket(port: int) -> socket.socket:
    """Open a websocket by hand (off the loop: the daemon runs on it) with a tiny receive buffer."""
    return await asyncio.get_running_loop().run_in_executor(None, _handshake, port)


def _handshake(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def frame(text: str) -> bytes:
    """A masked client text frame."""
    payload = text.encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x81, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, length)
    return header + mask + masked


async def test_client_that_never_reads_is_disconnected_and_others_keep_working(tmp_path):
    """A client submitting requests with big results and never reading is cut off (code 1008);
    its requests end (cancelled), and a well-behaved client on the same daemon is served."""
    async with serve(tmp_path, CONFIG.format(ping=20)) as d:
        sock = await raw_websocket(d.port)
        big = "x" * 100_000
        payloads = b"".join(
            frame(json.dumps({"type": "submit", "id": i, "endpoint": "echo", "data": big, "progress": False}))
            for i in range(150)
        )
        await asyncio.get_running_loop().run_in_executor(None, sock.sendall, payloads)
        await eventually(
            lambda: any(e["event"] == "slow reader disconnected" for e in d.log_events()),
            'a "slow reader disconnected" log event',
        )
        await eventually(lambda: len(d.daemon.connections), "the connection to close", until=lambda n: n == 0)
        sock.close()

        good = await d.ws()
        await good.submit("ok", "echo", "still served")
        assert (await good.terminal("ok"))["data"] == "still served"

        ends = [e for e in d.log_events() if e["event"] == "request"]
        admitted = {e["id"] for e in ends if e["id"] != "ok"}
        assert admitted, "the slow client's requests were admitted"
        assert {e["outcome"] for e in ends if e["id"] != "ok"} <= {"completed", "cancelled"}
        assert len(ends) == len({(e["id"]) for e in ends}), "each request ended exactly once"


async def test_client_that_never_answers_pings_is_dropped(tmp_path):
    """A connection that goes silent (no pong) is closed after about two ping intervals."""
    async with serve(tmp_path, CONFIG.format(ping=0.2)) as d:
        sock = await raw_websocket(d.port)
        await eventually(lambda: len(d.daemon.connections), "the connection to open", until=lambda n: n == 1)
        await eventually(
            lambda: len(d.daemon.connections), "the silent connection to be dropped", until=lambda n: n == 0
        )
        sock.close()


async def test_a_result_larger_than_the_client_buffer_gets_a_clean_close_not_half_a_frame(tmp_path):
    """One result over max_client_buffer_bytes (64 KiB here) is refused whole: the first frame the
    client reads is the 1008 close frame, never part of the result followed by the close."""
    async with serve(tmp_path, CONFIG.format(ping=20)) as d:
        sock = await raw_websocket(d.port)
        submit = {"type": "submit", "id": 1, "endpoint": "echo", "data": "x" * 300_000, "progress": False}
        loop = asyncio.get_running_loop()

        def first_frame() -> tuple[int, bytes]:
            sock.sendall(frame(json.dumps(submit)))
            head = b""
            while len(head) < 4:
                chunk = sock.recv(4 - len(head))
                assert chunk, "connection closed without a frame"
                head += chunk
            return head[0], head[2:4]

        opcode, code = await loop.run_in_executor(None, first_frame)
        sock.close()
    assert opcode == 0x88, f"first frame has opcode {opcode:#x}, not a close frame"
    assert struct.unpack("!H", code)[0] == 1008
