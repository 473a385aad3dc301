"""Malformed and oversized tensor and chat inputs through the real daemon (issue 25 bugs 1 and 5, issue 24).

Each attack is sent with a raw HTTP client (a socket: client libraries refuse a header of '²')
or a raw binary websocket frame, while an echo probe on another connection runs request after
request, and the daemon's memory is measured: the daemon runs in this process, so its peak RSS
is this process's (VmHWM, reset before the attack through /proc/self/clear_refs). Before these
fixes a 109-byte v2 request declaring a BYTES input of shape [300000000] made servd allocate
2.4 GB on the loop and stall every client for seconds, and a shape of [0, 2**70] or an
Inference-Header-Content-Length of '²' was a 500 with a traceback. Now each is a 400 naming the
problem, with no allocation beyond the body (peak RSS growth < 50 MB) and no stall (every probe
answered within 100 ms). The OpenAI layer's refusals go through the `openai` client.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest

from tests.harness import Running, serve

CONFIG = """
version: 1
server:
  drain_timeout_s: 5
endpoints:
  simple:
    entrypoint: examples.tensors:add_sub
    batch: {max_size: 8, max_delay_ms: 1}
    tensors:
      inputs: [{name: INPUT0, datatype: INT32, shape: [-1, 4]}, {name: INPUT1, datatype: INT32, shape: [-1, 4]}]
      outputs: [{name: OUTPUT0, datatype: INT32, shape: [-1, 4]}, {name: OUTPUT1, datatype: INT32, shape: [-1, 4]}]
  strings:
    entrypoint: examples.tensors:upper
    tensors:
      inputs: [{name: text, datatype: BYTES, shape: [-1]}]
      outputs: [{name: text, datatype: BYTES, shape: [-1]}]
  echo:
    entrypoint: examples.echo:echo
  chat:
    entrypoint: examples.chat:chat
    openai: {}
"""
MAX_GROWTH_MB = 50  # the attack's bodies are bytes; anything near this was allocated for a declared size
MAX_PROBE_S = 0.1  # the loop never stalls longer than this
ATTACKS = 3  # each attack is sent this many times while the probe runs


# -- measuring: the daemon's peak memory and an echo probe's latency across an attack --------------


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/self/status")


@dataclass
class Measured:
    rss_before_kb: int = 0
    peak_kb: int = 0
    latencies: list[float] = field(default_factory=list)

    @property
    def growth_mb(self) -> float:
        return (self.peak_kb - self.rss_before_kb) / 1024

    def check(self) -> None:
        """No allocation beyond the bodies, no stall, and the probe ran throughout."""
        shown = f"peak RSS +{self.growth_mb:.1f} MB, slowest probe {max(self.latencies, default=0) * 1000:.1f} ms"
        assert len(self.latencies) >= ATTACKS, f"the probe ran {len(self.latencies)} times; {shown}"
        assert self.growth_mb < MAX_GROWTH_MB, shown
        assert max(self.latencies) < MAX_PROBE_S, shown


@asynccontextmanager
async def measured(d: Running) -> AsyncIterator[Measured]:
    """Around the block: the peak RSS (reset at the start) and the latency of echo requests sent
    one after another on their own websocket, so one is always in flight while the block runs."""
    loop = asyncio.get_running_loop()
    probe = await d.ws()
    await probe.submit("warm", "echo", 0, progress=False)
    await probe.terminal("warm")
    result = Measured()
    stop = asyncio.Event()

    async def run_probe() -> None:
        count = 0
        while not stop.is_set():
            count += 1
            sent = loop.time()
            await probe.submit(f"p{count}", "echo", count, progress=False)
            assert (await probe.terminal(f"p{count}"))["data"] == count
            result.latencies.append(loop.time() - sent)

    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # VmHWM := VmRSS: the peak from here on
    result.rss_before_kb = _status_kb("VmRSS")
    task = asyncio.ensure_future(run_probe())
    try:
        await asyncio.sleep(0.01)  # the first probe is in flight
        yield result
        await asyncio.sleep(0.01)
    finally:
        stop.set()
        await task
        result.peak_kb = _status_kb("VmHWM")


# -- a raw HTTP client: bytes on a socket, the answer read to the end ------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> str:
        message = json.loads(self.body)["error"]
        assert isinstance(message, str)
        return message


async def raw_post(port: int, path: str, body: bytes, headers: dict[str, bytes | str]) -> Answer:
    """POST `body` with exactly these header bytes (a str is sent as latin-1, as HTTP has it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"POST {path} HTTP/1.1".encode(), f"Host: 127.0.0.1:{port}".encode(), b"Connection: close",
             f"Content-Length: {len(body)}".encode()]  # fmt: skip
    for key, value in headers.items():
        lines.append(key.encode() + b": " + (value if isinstance(value, bytes) else value.encode("latin-1")))
    writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
    try:
        raw = await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = dict(line.split(": ", 1) for line in header_lines)
    return Answer(int(status_line.split()[1]), parsed, rest)


async def v2_infer(
    d: Running,
    header: dict[str, Any],
    binary: bytes | None = None,
    length: bytes | str | None = None,
    model: str = "simple",
) -> Answer:
    """POST /v2/models/simple/infer: the JSON, then (when `binary` is given, empty or not) the
    binary section, with Inference-Header-Content-Length as given or else the JSON's length."""
    text = json.dumps(header, separators=(",", ":")).encode()
    headers: dict[str, bytes | str] = {"Content-Type": "application/json"}
    if binary is not None:
        headers["Content-Type"] = "application/octet-stream"
        length = str(len(text)) if length is None else length
    if length is not None:
        headers["Inference-Header-Content-Length"] = length
    return await raw_post(d.port, f"/v2/models/{model}/infer", text + (binary or b""), headers)


async def refused_each_time(d: Running, header: dict[str, Any], **options: Any) -> list[str]:
    """The attack, ATTACKS times: each a 400 with {"error": message}; the messages."""
    messages = []
    for _ in range(ATTACKS):
        answer = await v2_infer(d, header, **options)
        assert answer.status == 400, (answer.status, answer.body[:300])
        messages.append(answer.error())
    return messages


def all_say(messages: list[str], words: str) -> None:
    """Each message holds `words`, and is short text, not a traceback."""
    for message in messages:
        assert words in message and "Traceback" not in message and len(message) < 300, message


def bytes_input(shape: list[int], size: int) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": shape, "parameters": {"binary_data_size": size}}]}


# -- bug 1: a declared size checked against the bytes present before anything is allocated --------


async def test_a_v2_bytes_input_declaring_more_elements_than_its_body_holds_is_refused_before_allocating(tmp_path):
    """A 109-byte v2 request declaring a BYTES input of shape [300000000] with binary_data_size 0
    is a 400 saying 300000000 elements need at least 1200000000 bytes; servd allocates nothing
    for it (it used to make a 2.4 GB array first) and the echo probe beside it is never held up."""
    async with serve(tmp_path, CONFIG) as d:
        header = bytes_input([300_000_000], 0)
        async with measured(d) as attack:
            messages = await refused_each_time(d, header, binary=b"")
        attack.check()
        all_say(messages, "input 'text': 300000000 BYTES elements need at least 1200000000 bytes")
        sent = b"\x02\x00\x00\x00hi\x01\x00\x00\x00!"  # a BYTES input that holds what it declares is served
        ok = await v2_infer(d, bytes_input([2], len(sent)), binary=sent, model="strings")
        assert ok.status == 200 and json.loads(ok.body)["outputs"][0]["data"] == ["HI", "!"], ok.body[:300]


async def test_a_binary_websocket_frame_declaring_more_bytes_elements_than_it_holds_is_refused_before_allocating(
    tmp_path,
):
    """The websocket's binary frame with a BYTES input of shape [100000000] and size 0 is refused
    (bad_request, naming the bytes it would need) without allocating (it used to take +760 MB);
    the socket stays open and its next request is served."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        described = [{"name": "text", "datatype": "BYTES", "shape": [100_000_000], "size": 0}]
        errors = []
        async with measured(d) as attack:
            for attempt in range(ATTACKS):
                header = json.dumps({"type": "submit", "id": f"a{attempt}", "endpoint": "strings", "data": described})
                await ws.send(struct.pack("<I", len(header)) + header.encode())
                errors.append((await ws.terminal(f"a{attempt}"))["error"])
        attack.check()
        assert {error["code"] for error in errors} == {"bad_request"}
        all_say([error["message"] for error in errors], "100000000 BYTES elements need at least 400000000 bytes")
        await ws.submit("after", "echo", "still open", progress=False)
        assert (await ws.terminal("after"))["data"] == "still open"


# -- bug 5: malformed v2 input is a 400 with a message, never a 500 -------------------------------


INT32_ZERO_BY_HUGE = {"name": "INPUT0", "datatype": "INT32", "shape": [0, 2**70]}


@pytest.mark.parametrize(
    ("header", "words"),
    [
        ({"inputs": [{**INT32_ZERO_BY_HUGE, "parameters": {"binary_data_size": 0}}]}, "too large for any INT32"),
        ({"inputs": [{**INT32_ZERO_BY_HUGE, "data": []}]}, "too large for any INT32"),
        (bytes_input([2**70], 0), "too large for any BYTES"),
        (bytes_input([1] * 40, 4), "40 dimensions; at most 32"),
    ],
    ids=["[0, 2**70] binary", "[0, 2**70] JSON data", "BYTES [2**70]", "40 dimensions"],
)
async def test_a_shape_no_array_can_have_is_a_400_naming_the_shape(tmp_path, header, words):
    """Shapes numpy can't hold ([0, 2**70] as binary or JSON data, BYTES [2**70], 40 dimensions)
    are 400 naming the input and its shape; they were 500s with a traceback (ValueError:
    Maximum allowed dimension exceeded). Nothing is logged as an error."""
    async with serve(tmp_path, CONFIG) as d:
        item = header["inputs"][0]
        binary = None if "data" in item else b"\x00" * item["parameters"]["binary_data_size"]
        async with measured(d) as attack:
            messages = await refused_each_time(d, header, binary=binary)
        attack.check()
        all_say(messages, words)


@pytest.mark.parametrize(
    "value",
    [b"\xb2", b"9" * 5000, "\uff11\uff12".encode("utf-8"), b"12 34"],
    ids=["superscript two", "5000 digits", "fullwidth digits", "two numbers"],
)
async def test_an_inference_header_content_length_that_is_not_ascii_digits_is_a_400(tmp_path, value):
    """Inference-Header-Content-Length of '²' (isdigit() takes it, int() does not), 5,000 digits
    (past int()'s limit), fullwidth digits: 400 saying it must be a number of bytes in ASCII
    digits; they were 500s with a traceback."""
    async with serve(tmp_path, CONFIG) as d:
        header = {"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
        async with measured(d) as attack:
            messages = await refused_each_time(d, header, length=value)
        attack.check()
        all_say(messages, "Inference-Header-Content-Length must be a number of bytes (ASCII digits)")


async def test_a_timeout_parameter_past_any_float_is_a_400(tmp_path):
    """parameters.timeout of 10**400 microseconds is 400 naming the parameter (it was a 500:
    OverflowError turning it into seconds); the message shows the value cut short."""
    async with serve(tmp_path, CONFIG) as d:
        text = (
            '{"inputs":[{"name":"INPUT0","datatype":"INT32","shape":[1,4],"data":[1,2,3,4]}],'
            '"parameters":{"timeout":' + "1" + "0" * 400 + "}}"
        ).encode()
        answer = await raw_post(d.port, "/v2/models/simple/infer", text, {"Content-Type": "application/json"})
        assert answer.status == 400, answer.body[:300]
        assert "parameters.timeout must be microseconds" in answer.error() and len(answer.error()) < 200


# -- issue 24: the OpenAI layer refuses what OpenAI refuses -------------------------------------


QUESTION = [{"role": "user", "content": "what is a batch?"}]


@asynccontextmanager
async def openai_client(d: Running) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=d.url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"messages": [{"role": "wizard", "content": "abracadabra"}]}, "messages[0].role",
         "Invalid value: 'wizard'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and "
         "'developer'."),
        ({"messages": [*QUESTION, {"role": "user"}]}, "messages[1].content",
         "Missing required parameter: 'messages[1].content'."),
        ({"messages": QUESTION, "top_p": 3}, "top_p", "Expected a value <= 1, but got 3 instead."),
        ({"messages": QUESTION, "stop": [f"s{i}" for i in range(10)]}, "stop",
         "Expected an array with maximum length 4, but got an array with length 10 instead."),
        ({"messages": QUESTION, "logprobs": True}, "logprobs", "'logprobs' is not supported"),
    ],
    ids=["role wizard", "no content", "top_p 3", "ten stops", "logprobs true"],
)  # fmt: skip
async def test_what_openai_refuses_is_a_bad_request_in_openais_shape(tmp_path, fields, param, words):
    """Through the `openai` client: role "wizard", a user message without content, top_p 3, ten
    stop strings and logprobs: true each raise BadRequestError (400) with OpenAI's error shape,
    the offending field as `param` and OpenAI's wording; they used to reach the entrypoint (or,
    for logprobs, be silently ignored). The endpoint runs nothing for them."""
    async with serve(tmp_path, CONFIG) as d, openai_client(d) as c:
        with pytest.raises(openai.BadRequestError) as refused:
            await c.chat.completions.create(model="chat", **fields)
        assert d.daemon.endpoints["chat"].stats.completed == 0
        answer = await c.chat.completions.create(model="chat", messages=QUESTION, top_p=1, stop=["a", "b", "c", "d"])
    body = refused.value.body
    assert refused.value.status_code == 400
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    assert (body["type"], body["param"], body["code"]) == ("invalid_request_error", param, "bad_request")
    assert words in body["message"], body["message"]
    assert answer.choices[0].message.content


async def test_a_message_without_content_is_refused_over_raw_http_too(tmp_path):
    """The same refusal without a client library: POST a system message without content and get
    400 {"error": {"message", "type", "param", "code"}} naming messages[0].content."""
    async with serve(tmp_path, CONFIG) as d:
        body = json.dumps({"model": "chat", "messages": [{"role": "system"}, *QUESTION]}).encode()
        answer = await raw_post(d.port, "/v1/chat/completions", body, {"Content-Type": "application/json"})
    assert answer.status == 400, answer.body[:300]
    error = json.loads(answer.body)["error"]
    assert error["param"] == "messages[0].content" and error["type"] == "invalid_request_error"
