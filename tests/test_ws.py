"""The websocket queue as a client sees it: /v1/ws and /v1/endpoints/{name}/ws (DESIGN.md §4).

`GATE` is an entrypoint the test holds shut, so "this request is running" and "that one is
waiting behind it" are facts the test controls rather than races it hopes to win. The other
test modules serve it too (as `tests.test_ws:GATE`).
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from servd.web.compat import BufferedFrames, fast_send_supported
from tests.harness import TERMINAL, WAIT_S, WsClient, eventually, serve
from tests.test_slow_clients import _handshake


class Gate:
    """An entrypoint that records each input, then waits until the test opens it.

    The wait is bounded (WAIT_S) so a failing test never leaves a worker thread blocked for good.
    """

    def __init__(self) -> None:
        self._open = threading.Event()
        self._lock = threading.Lock()
        self.calls: list[Any] = []

    def __call__(self, data: Any) -> Any:
        with self._lock:
            self.calls.append(data)
        self._open.wait(WAIT_S)
        return data

    @contextmanager
    def shut(self) -> Iterator[Gate]:
        """Closed (with a fresh record of calls) for the block; opened when the block ends."""
        self._open.clear()
        self.calls.clear()
        try:
            yield self
        finally:
            self._open.set()

    def open(self) -> None:
        self._open.set()


GATE = Gate()

CONFIG = """
version: 1
server:
  max_message_bytes: 1024
  drain_timeout_s: 5
endpoints:
  echo:
    entrypoint: examples.echo:echo
  words:
    entrypoint: examples.stream:words
  counter:
    entrypoint: examples.faults:Counter
    device: cpu
  gate:
    entrypoint: tests.test_ws:GATE
    concurrency: 1
  closed:
    entrypoint: examples.echo:echo
    api_open: false
  typed:
    entrypoint: examples.echo:echo
    input_schema: {type: object, required: [n], properties: {n: {type: integer}}}
"""


def kinds(ws: WsClient, id: Any) -> list[str]:
    return [m["type"] for m in ws.of(id)]


def terminals_of(ws: WsClient, id: Any) -> list[dict[str, Any]]:
    return [m for m in ws.of(id) if m["type"] in TERMINAL]


async def started(ws: WsClient, id: Any) -> None:
    await ws.wait_for(lambda m: m.get("id") == id and m["type"] == "started")


async def queued(ws: WsClient, id: Any) -> dict[str, Any]:
    return await ws.wait_for(lambda m: m.get("id") == id and m["type"] == "queued")


async def until_idle(d: Any, name: str) -> None:
    """Wait (bounded) until /v1/endpoints/{name} shows nothing queued or running."""

    async def stats() -> dict[str, Any]:
        return dict((await d.http("GET", f"/v1/endpoints/{name}")).json()["stats"])

    await eventually(stats, f"{name} to be idle", until=lambda s: s["queued"] == 0 and s["running"] == 0)


# -- routes ------------------------------------------------------------------------------------


async def test_one_socket_carries_many_requests_to_different_endpoints(tmp_path):
    """Requests to several endpoints, interleaved on one /v1/ws socket, each end with their own result."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        await ws.submit("e1", "echo", {"n": 1})
        await ws.submit("w1", "words", {"text": "a b", "delay_s": 0.001})
        await ws.submit(3, "counter", "x")
        await ws.submit("e2", "echo", [2])
        assert (await ws.terminal("e1"))["data"] == {"n": 1}
        assert (await ws.terminal("w1"))["data"] == "a b"
        assert (await ws.terminal(3))["data"]["data"] == "x"
        assert (await ws.terminal("e2"))["data"] == [2]
        for id in ("e1", "w1", 3, "e2"):
            assert len(terminals_of(ws, id)) == 1


async def test_messages_use_the_direct_frame_write_on_this_tornado(tmp_path):
    """servd writes frames without a Task per message on the Tornado installed here, and what it
    writes is what a client reads, multi-byte text included. If a Tornado release renames the
    internals this relies on, this fails (servd itself falls back to write_message)."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        text = "naïve ✓ " * 40  # over 125 bytes: a frame with a 16-bit length
        await ws.submit(1, "echo", text)
        assert (await ws.terminal(1))["data"] == text
        (socket,) = d.daemon.connections
        assert fast_send_supported(socket.ws_connection)
        assert isinstance(socket.ws_connection, BufferedFrames)


def masked_frame(opcode: int, payload: bytes, final: bool = True) -> bytes:
    """One client frame (masked, as RFC 6455 requires of clients), any opcode, final or not."""
    mask = os.urandom(4)
    head = (0x80 if final else 0) | opcode
    length = len(payload)
    size = struct.pack("!B", 0x80 | length) if length < 126 else struct.pack("!BH", 0x80 | 126, length)
    return bytes([head]) + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_frames(sock: Any, count: int) -> list[tuple[int, bytes]]:
    """Read `count` server frames (unmasked): [(opcode, payload)]."""
    buffer, frames = b"", []
    while len(frames) < count:
        buffer += sock.recv(65536)
        while len(buffer) >= 2:
            length, start = buffer[1] & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    break
                length, start = struct.unpack("!H", buffer[2:4])[0], 4
            if len(buffer) < start + length:
                break
            frames.append((buffer[0] & 0x0F, buffer[start : start + length]))
            buffer = buffer[start + length :]
    return frames


def submit_text(id: int, data: Any) -> bytes:
    return json.dumps({"type": "submit", "id": id, "endpoint": "echo", "data": data, "progress": False}).encode()


async def test_frames_arriving_together_split_or_fragmented_are_each_read_right(tmp_path):
    """Over a raw socket: three frames in one write, one frame sent a byte at a time, and a message
    in three fragments with a ping between them all get their answers (and the ping its pong)."""
    async with serve(tmp_path, CONFIG) as d:
        loop = asyncio.get_running_loop()
        sock = await loop.run_in_executor(None, _handshake, d.port)

        def exchange() -> list[tuple[int, bytes]]:
            sock.sendall(b"".join(masked_frame(0x1, submit_text(i, i)) for i in (1, 2, 3)))
            for byte in masked_frame(0x1, submit_text(4, "x" * 300)):
                sock.sendall(bytes([byte]))
            whole = submit_text(5, "fragmented ✓")
            sock.sendall(masked_frame(0x1, whole[:10], final=False))
            sock.sendall(masked_frame(0x9, b"are you there"))
            sock.sendall(masked_frame(0x0, whole[10:20], final=False) + masked_frame(0x0, whole[20:]))
            return read_frames(sock, 6)

        frames = await loop.run_in_executor(None, exchange)
        sock.close()
    assert (0xA, b"are you there") in frames
    answers = {m["id"]: m for m in (json.loads(p) for op, p in frames if op == 0x1)}
    assert {i: answers[i]["data"] for i in answers} == {1: 1, 2: 2, 3: 3, 4: "x" * 300, 5: "fragmented ✓"}
    assert all(m["type"] == "completed" for m in answers.values())


async def test_endpoint_socket_needs_no_endpoint_in_submit(tmp_path):
    """On /v1/endpoints/{name}/ws a submit without "endpoint" goes to that endpoint."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws("/v1/endpoints/echo/ws")
        await ws.submit("a", None, "hello")
        await ws.submit("b", "echo", "named too")
        assert (await ws.terminal("a"))["data"] == "hello"
        assert (await ws.terminal("b"))["data"] == "named too"


async def test_endpoint_socket_refuses_a_submit_naming_another_endpoint(tmp_path):
    """On /v1/endpoints/echo/ws a submit naming another endpoint gets bad_request with its id."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws("/v1/endpoints/echo/ws")
        await ws.submit("a", "counter", 1)
        error = await ws.terminal("a")
        assert error["error"]["code"] == "bad_request"
        assert "echo" in error["error"]["message"]
        assert kinds(ws, "a") == ["error"]


async def test_progress_false_gets_only_the_terminal_message(tmp_path):
    """With "progress": false a request gets its terminal message and nothing else: no queued, no
    estimation when its rank changes, no started, no partials of a stream."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        with GATE.shut():
            await ws.submit("run", "gate", "run")
            await started(ws, "run")
            await ws.submit("ahead", "gate", "ahead")
            await ws.submit("quiet", "gate", "quiet", progress=False)
            await ws.submit("loud", "gate", "loud")
            await queued(ws, "loud")
            await ws.send({"type": "cancel", "id": "ahead"})
            await ws.wait_for(lambda m: m.get("id") == "loud" and m["type"] == "estimation")
            GATE.open()
            assert (await ws.terminal("quiet"))["data"] == "quiet"
            await ws.terminal("loud")
        await ws.submit("stream", "words", {"text": "one two three", "delay_s": 0.001}, progress=False)
        assert (await ws.terminal("stream"))["data"] == "one two three"
        assert kinds(ws, "quiet") == ["completed"]
        assert kinds(ws, "stream") == ["completed"]
        assert kinds(ws, "loud") == ["queued", "estimation", "started", "completed"]


async def test_api_closed_endpoint_still_serves_its_websocket_queue(tmp_path):
    """api_open: false closes only the HTTP API: the endpoint completes requests over websocket."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        await ws.submit("c", "closed", "ok")
        assert (await ws.terminal("c"))["data"] == "ok"
        ws2 = await d.ws("/v1/endpoints/closed/ws")
        await ws2.submit("c2", None, "ok too")
        assert (await ws2.terminal("c2"))["data"] == "ok too"


# -- malformed messages ------------------------------------------------------------------------

MALFORMED = [
    pytest.param('{"type": "submit", "id": 1, ', None, id="bad-json"),
    pytest.param("[1, 2, 3]", None, id="not-an-object"),
    pytest.param('"submit"', None, id="a-json-string"),
    pytest.param('{"id": 5, "endpoint": "echo", "data": 1}', 5, id="missing-type"),
    pytest.param('{"type": "launch", "id": "x", "data": 1}', "x", id="unknown-type"),
    pytest.param('{"type": "submit", "endpoint": "echo", "data": 1}', None, id="missing-id"),
    pytest.param('{"type": "submit", "id": 1.5, "endpoint": "echo", "data": 1}', None, id="float-id"),
    pytest.param('{"type": "submit", "id": true, "endpoint": "echo", "data": 1}', None, id="bool-id"),
    pytest.param('{"type": "submit", "id": ["a"], "endpoint": "echo", "data": 1}', None, id="list-id"),
    pytest.param('{"type": "submit", "id": "nodata", "endpoint": "echo"}', "nodata", id="missing-data"),
    pytest.param('{"type": "submit", "id": "ep", "endpoint": 7, "data": 1}', "ep", id="endpoint-not-a-string"),
    pytest.param('{"type": "submit", "id": "p", "endpoint": "echo", "data": 1, "progress": "no"}', "p", id="progress"),
    pytest.param('{"type": "submit", "id": "n", "endpoint": "echo", "data": NaN}', None, id="nan-is-not-json"),
    pytest.param(b'{"type": "submit", "id": 1, "endpoint": "echo", "data": 1}', None, id="binary-frame"),
]


@pytest.mark.parametrize(("message", "expected_id"), MALFORMED)
async def test_malformed_message_gets_bad_request_and_the_socket_stays_open(tmp_path, message, expected_id):
    """A message that can't be acted on gets one bad_request error (id null unless it could be read);
    the connection stays open and the next submit on it completes."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        await ws.send(message)
        error = await ws.wait_for(lambda m: m["type"] == "error")
        assert error["id"] == expected_id
        assert error["error"]["code"] == "bad_request"
        assert error["error"]["message"]
        await ws.submit("after", "echo", "still open")
        assert (await ws.terminal("after"))["data"] == "still open"
        assert len(ws.messages) == 1 + len(ws.of("after")), "one error for the bad message, nothing else"


async def test_message_over_max_message_bytes_gets_too_large_and_the_socket_stays_open(tmp_path):
    """A message over server.max_message_bytes gets too_large (naming the limit); the socket stays usable."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        await ws.submit("big", "echo", "x" * 1500)
        error = await ws.wait_for(lambda m: m["type"] == "error")
        assert error["error"]["code"] == "too_large"
        assert "max_message_bytes=1024" in error["error"]["message"]
        await ws.submit("small", "echo", "fits")
        assert (await ws.terminal("small"))["data"] == "fits"
        assert ws.of("big") == []


async def test_message_limit_counts_bytes_not_characters(tmp_path):
    """max_message_bytes is in bytes: a text message of fewer characters than the limit but more
    UTF-8 bytes gets too_large too."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        text = '{"type": "submit", "id": "wide", "endpoint": "echo", "data": "' + "\u00e9" * 600 + '"}'
        assert len(text) < 1024 < len(text.encode())
        await ws.send(text)
        error = await ws.wait_for(lambda m: m["type"] == "error")
        assert error["error"]["code"] == "too_large"
        assert ws.of("wide") == []


async def test_frame_far_over_the_limit_closes_the_socket(tmp_path):
    """A frame over twice server.max_message_bytes is not buffered: the connection is closed (1009)."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        await ws.send("x" * 5000)
        await ws.wait_closed()
        assert ws.conn.close_code == 1009
        other = await d.ws()
        await other.submit(1, "echo", "others unaffected")
        assert (await other.terminal(1))["data"] == "others unaffected"


# -- ids ---------------------------------------------------------------------------------------


async def test_duplicate_id_in_flight_is_refused_and_the_first_request_is_untouched(tmp_path):
    """A submit reusing an id that is in flight gets bad_request with id null and a message naming the
    id; the first request completes normally with its own data, and the id is free again afterwards."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        with GATE.shut():
            await ws.submit("dup", "gate", "first")
            await started(ws, "dup")
            await ws.submit("dup", "echo", "second")
            error = await ws.wait_for(lambda m: m["type"] == "error")
            assert error["id"] is None
            assert error["error"]["code"] == "bad_request"
            assert "dup" in error["error"]["message"]
            GATE.open()
            done = await ws.terminal("dup")
        assert done["type"] == "completed"
        assert done["data"] == "first"
        assert kinds(ws, "dup") == ["queued", "started", "completed"]
        await ws.submit("dup", "echo", "reused")
        assert (await ws.wait_for(lambda m: m.get("id") == "dup" and m.get("data") == "reused"))["type"] == "completed"


async def test_same_id_on_two_sockets_are_two_requests(tmp_path):
    """Ids are per connection: two sockets may use the same id at once, each gets its own result."""
    async with serve(tmp_path, CONFIG) as d:
        one, two = await d.ws(), await d.ws()
        await one.submit(1, "echo", "one")
        await two.submit(1, "echo", "two")
        assert (await one.terminal(1))["data"] == "one"
        assert (await two.terminal(1))["data"] == "two"


async def test_unknown_endpoint_gets_unknown_endpoint_with_the_id(tmp_path):
    """A submit to a missing endpoint gets unknown_endpoint with its id, and nothing else."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        await ws.submit("lost", "nope", 1)
        error = await ws.terminal("lost")
        assert error["error"]["code"] == "unknown_endpoint"
        assert "nope" in error["error"]["message"]
        assert kinds(ws, "lost") == ["error"]


async def test_data_failing_input_schema_gets_invalid_input_with_the_id(tmp_path):
    """Over websocket, data failing input_schema gets invalid_input with the id, naming the failing path."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        await ws.submit("bad", "typed", {"n": "seven"})
        error = await ws.terminal("bad")
        assert error["error"]["code"] == "invalid_input"
        assert "data['n']" in error["error"]["message"]
        assert kinds(ws, "bad") == ["error"]


async def test_submit_without_endpoint_on_v1_ws_is_a_bad_request(tmp_path):
    """On /v1/ws a submit must name its endpoint; without one it gets bad_request with its id."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        await ws.submit("where", None, 1)
        error = await ws.terminal("where")
        assert error["error"]["code"] == "bad_request"


# -- cancel ------------------------------------------------------------------------------------


async def test_cancel_of_unknown_id_is_ignored(tmp_path):
    """A cancel for an id that is not queued or running gets no reply at all."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        await ws.send({"type": "cancel", "id": "ghost"})
        await ws.submit("done", "echo", 1)
        await ws.terminal("done")
        await ws.send({"type": "cancel", "id": "done"})
        await ws.submit("after", "echo", 2)
        await ws.terminal("after")
        assert ws.of("ghost") == []
        assert kinds(ws, "done") == ["queued", "started", "completed"]
        assert [m["id"] for m in ws.messages] == ["done"] * 3 + ["after"] * 3


async def test_cancel_of_a_queued_request_ends_it_and_it_never_runs(tmp_path):
    """A queued request that is cancelled gets error cancelled at once, never starts, and its input
    never reaches the entrypoint; the requests around it run."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        with GATE.shut():
            await ws.submit("running", "gate", "running")
            await started(ws, "running")
            await ws.submit("victim", "gate", "victim")
            await ws.submit("behind", "gate", "behind")
            assert (await queued(ws, "victim"))["rank"] == 0
            await ws.send({"type": "cancel", "id": "victim"})
            error = await ws.terminal("victim")
            assert error["error"]["code"] == "cancelled"
            GATE.open()
            assert (await ws.terminal("running"))["data"] == "running"
            assert (await ws.terminal("behind"))["data"] == "behind"
        assert kinds(ws, "victim") == ["queued", "error"]
        assert "victim" not in GATE.calls
        assert GATE.calls == ["running", "behind"]


async def test_cancel_of_a_running_request_ends_it_with_cancelled(tmp_path):
    """A running request that is cancelled gets error cancelled and no result after it; the endpoint
    goes on to serve the next request."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        with GATE.shut():
            await ws.submit("r", "gate", "r")
            await started(ws, "r")
            await ws.send({"type": "cancel", "id": "r"})
            error = await ws.terminal("r")
            assert error["error"]["code"] == "cancelled"
            await ws.submit("next", "gate", "next")
            GATE.open()
            assert (await ws.terminal("next"))["data"] == "next"
        assert kinds(ws, "r") == ["queued", "started", "error"]


async def test_cancel_of_a_streaming_request_stops_its_partials(tmp_path):
    """A streaming request cancelled after its first partial gets cancelled and no partial after it;
    its generator stops, so the next request on the endpoint (concurrency 1) gets the slot."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        await ws.submit("long", "words", {"text": " ".join(["word"] * 150), "delay_s": 0.05})
        await ws.wait_for(lambda m: m.get("id") == "long" and m["type"] == "partial")
        await ws.send({"type": "cancel", "id": "long"})
        await ws.submit("next", "words", {"text": "short", "delay_s": 0.001})
        assert (await ws.terminal("long"))["error"]["code"] == "cancelled"
        assert (await ws.terminal("next"))["data"] == "short"
        assert kinds(ws, "long")[-1] == "error"
        assert len(terminals_of(ws, "long")) == 1


async def test_submit_while_the_daemon_shuts_down_gets_unavailable(tmp_path):
    """Once shutdown has begun, a websocket submit gets unavailable with its id; the request being
    drained still completes on the same socket."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        with GATE.shut():
            await ws.submit("draining", "gate", "finishes")
            await started(ws, "draining")
            stopping = asyncio.ensure_future(d.daemon.shutdown())
            await eventually(lambda: d.daemon.shutting_down, "the shutdown to begin", interval=0.01)
            await ws.submit("late", "echo", 1)
            assert (await ws.terminal("late"))["error"]["code"] == "unavailable"
            GATE.open()
            assert (await ws.terminal("draining"))["data"] == "finishes"
            await asyncio.wait_for(stopping, WAIT_S)


async def test_closing_the_socket_cancels_its_requests(tmp_path):
    """When a client disconnects, its queued and running requests end (cancelled) and never run on."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        with GATE.shut():
            await ws.submit("running", "gate", "running")
            await started(ws, "running")
            await ws.submit("waiting", "gate", "waiting")
            await queued(ws, "waiting")
            ws.close()
            await ws.wait_closed()
            await until_idle(d, "gate")
            other = await d.ws()
            await other.submit("other", "gate", "other")
            await queued(other, "other")
            GATE.open()
            assert (await other.terminal("other"))["data"] == "other"
        outcomes = {e["id"]: e["outcome"] for e in d.log_events() if e["event"] == "request"}
        assert outcomes == {"running": "cancelled", "waiting": "cancelled", "other": "completed"}
        assert "waiting" not in GATE.calls


# -- refusals before the upgrade ---------------------------------------------------------------


async def test_endpoint_socket_for_unknown_endpoint_is_refused_with_404(tmp_path):
    """/v1/endpoints/nope/ws is refused before the upgrade with HTTP 404 unknown_endpoint."""
    async with serve(tmp_path, CONFIG) as d:
        with pytest.raises(HTTPClientError) as refused:
            await d.ws("/v1/endpoints/nope/ws")
        assert refused.value.code == 404
        assert refused.value.response is not None
        assert b"unknown_endpoint" in refused.value.response.body


ORIGINS = CONFIG.replace("drain_timeout_s: 5", 'drain_timeout_s: 5\n  allowed_origins: ["https://app.example"]')


async def test_origin_not_in_allowed_origins_is_refused_with_403(tmp_path):
    """With allowed_origins set, a browser Origin not in the list is refused (403)."""
    async with serve(tmp_path, ORIGINS) as d:
        with pytest.raises(HTTPClientError) as refused:
            await d.ws("/v1/ws", headers={"Origin": "https://evil.example"})
        assert refused.value.code == 403


async def test_listed_origin_and_no_origin_are_allowed(tmp_path):
    """With allowed_origins set, a listed Origin and a client sending no Origin both connect and are served."""
    async with serve(tmp_path, ORIGINS) as d:
        for ws in (await d.ws("/v1/ws", headers={"Origin": "https://app.example"}), await d.ws()):
            await ws.submit(1, "echo", "hi")
            assert (await ws.terminal(1))["data"] == "hi"
