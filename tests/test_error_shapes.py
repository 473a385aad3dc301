"""One error shape, one table, every transport (the "foundations" issue, part B).

Every HTTP error answer is `{"error": {"code", "message"}}` in compact JSON, with the status its
code has in ErrorCode and in the docs' error-code table; a refusal before admission is that plain answer
over SSE too, and only what happens after admission arrives as an `event: error` carrying the
request's id.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from servd.errors import ErrorCode
from tests.harness import WAIT_S, Reply, serve
from tests.test_http import CONFIG, SSE, hold_gate_and_queue_one, sse_events
from tests.test_ws import GATE

ERROR_CODES_PAGE = (Path(__file__).resolve().parent.parent / "docs" / "reference" / "errors.md").read_text()


def wire_error(reply: Reply) -> dict[str, Any]:
    """The error of an HTTP answer, checked for the one shape: JSON, compact, nothing but "error"."""
    assert reply.headers["Content-Type"].startswith("application/json"), reply.headers["Content-Type"]
    body = reply.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert reply.body == json.dumps(body, separators=(",", ":")).encode(), "error bodies are compact JSON"
    code = body["error"]["code"]
    assert reply.status == ErrorCode[code.upper()].http_status, (reply.status, code)
    return body["error"]  # type: ignore[no-any-return]


def readme_codes() -> dict[str, str]:
    """code -> HTTP column of the error-code table (docs/reference/errors.md)."""
    return dict(re.findall(r"^\| `([a-z_]+)` \| .* \| (\d{3}|—) \|$", ERROR_CODES_PAGE, re.M))


def test_the_readme_table_lists_every_error_code_with_its_status():
    """The docs' error-code table and ErrorCode hold the same codes, each with the same HTTP status
    (`cancelled` is never sent over HTTP: —). Regression: `not_found` was sent but in neither."""
    expected = {code.word: "—" if code is ErrorCode.CANCELLED else str(code.http_status) for code in ErrorCode}
    assert readme_codes() == expected


# -- SSE: refusals before admission are plain answers ----------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("/v1/endpoints/typed", {"data": {"n": "x"}}, "invalid_input"),
        ("/v1/endpoints/nope", {"data": 1}, "unknown_endpoint"),
        ("/v1/endpoints/echo", {"input": 1}, "bad_request"),
        ("/v1/endpoints/closed", {"data": 1}, "api_closed"),
    ],
)
async def test_a_refusal_before_admission_over_sse_is_a_plain_status_and_json_body(tmp_path, path, body, code):
    """POST with Accept: text/event-stream that is refused before admission gets the code's HTTP
    status and the JSON error body, as without SSE: nothing was sent yet. Regression: invalid_input
    was a 200 stream holding one `event: error` with `id: null`."""
    async with serve(tmp_path, CONFIG) as d:
        reply = await d.http("POST", path, body, SSE)
        assert wire_error(reply)["code"] == code


async def test_a_full_queue_over_sse_is_503_with_retry_after(tmp_path):
    """queue_full, refused at admission, is a plain 503 with Retry-After over SSE too."""
    async with serve(tmp_path, CONFIG) as d:
        with GATE.shut():
            await hold_gate_and_queue_one(d, "small")
            reply = await d.http("POST", "/v1/endpoints/small", {"data": "one too many"}, SSE)
            assert wire_error(reply)["code"] == "queue_full"
            assert int(reply.headers["Retry-After"]) >= 1


async def test_an_error_after_admission_over_sse_is_an_event_with_the_request_id(tmp_path):
    """Once admitted (the stream has begun with `queued`), a failure is an `event: error` carrying
    the same id as the request's other events."""
    async with serve(tmp_path, CONFIG, expect_errors=True) as d:
        reply = await d.http("POST", "/v1/endpoints/odd", {"data": 3}, SSE)
        assert reply.status == 200
        events = sse_events(reply)
        assert [name for name, _ in events] == ["queued", "started", "error"]
        ids = {data["id"] for _, data in events}
        assert len(ids) == 1 and ids != {None}
        assert events[-1][1]["error"]["code"] == "endpoint_failed"


# -- routes and methods ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT"])
async def test_an_unknown_route_is_404_not_found(tmp_path, method):
    """A path that is no route gets 404 `not_found` (a code in the table), whatever the method."""
    async with serve(tmp_path, CONFIG) as d:
        reply = await d.http(method, "/v2/whatever", {"data": 1} if method != "GET" else None)
        error = wire_error(reply)
        assert error["code"] == "not_found"
        assert "/v2/whatever" in error["message"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/endpoints/echo", "GET, POST, OPTIONS"),
        ("DELETE", "/v1/endpoints/echo", "GET, POST, OPTIONS"),
        ("POST", "/v1/status", "GET, OPTIONS"),
        ("DELETE", "/healthz", "GET, OPTIONS"),
        ("HEAD", "/v1/endpoints", "GET, OPTIONS"),
        ("POST", "/v1/ws", "GET"),
        ("PUT", "/v1/endpoints/echo/ws", "GET"),
    ],
)
async def test_every_405_is_json_method_not_allowed_with_an_allow_header(tmp_path, method, path, allowed):
    """A method a route doesn't serve gets 405 `method_not_allowed` naming the route's methods, which
    the Allow header lists; websocket routes too. Regression: PUT got `bad_request`, and POST to a
    websocket route got Tornado's HTML page."""
    async with serve(tmp_path, CONFIG) as d:
        reply = await d.http(method, path, {"data": 1} if method not in ("HEAD", "DELETE") else None)
        assert reply.status == 405
        assert reply.headers["Allow"] == allowed
        if method != "HEAD":  # a HEAD answer has no body
            error = wire_error(reply)
            assert error["code"] == "method_not_allowed"
            assert method in error["message"] and allowed in error["message"]


async def test_a_plain_get_of_a_websocket_route_is_400_json(tmp_path):
    """GET /v1/ws without a websocket handshake gets 400 `bad_request` in JSON (was plain text)."""
    async with serve(tmp_path, CONFIG) as d:
        error = wire_error(await d.http("GET", "/v1/ws"))
        assert error["code"] == "bad_request"
        assert "websocket" in error["message"]


async def test_a_refused_websocket_upgrade_answers_the_http_error_shape(tmp_path):
    """A websocket handshake refused before the upgrade is an HTTP answer, so it has the HTTP shape:
    no websocket message fields (`type`, `id`)."""
    async with serve(tmp_path, CONFIG) as d:
        headers = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip
        error = wire_error(await d.http("GET", "/v1/endpoints/nope/ws", headers=headers))
        assert error["code"] == "unknown_endpoint"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("POST", "/v1/endpoints/nope", {"data": 1}), ("POST", "/v1/endpoints/echo", [1]),
     ("POST", "/v1/endpoints/typed", {"data": {"n": "x"}}), ("PUT", "/v1/endpoints/echo", None),
     ("GET", "/nowhere", None)],
)  # fmt: skip
async def test_error_bodies_are_compact_like_success_bodies(tmp_path, method, path, body):
    """Error bodies are compact JSON (no spaces after separators), as results are. Regression: they
    were written with json.dumps' default ", " and ": "."""
    async with serve(tmp_path, CONFIG) as d:
        wire_error(await d.http(method, path, body))
        listing = await d.http("GET", "/v1/endpoints")
        assert listing.body == json.dumps(listing.json(), separators=(",", ":")).encode()


# -- a chunked body past the limit ---------------------------------------------------------------


LIMIT = 65536
CHUNKED = CONFIG.replace("max_message_bytes: 1024", f"max_message_bytes: {LIMIT}")


async def post_chunked(port: int, path: str, total: int, chunk: int = 1024) -> tuple[int, dict[str, str], bytes]:
    """POST a `total`-byte JSON body with Transfer-Encoding: chunked, as curl and browsers do: the
    answer is read while sending, and sending stops once it has come (a server may answer before
    the body ends)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nTransfer-Encoding: chunked\r\n"
    writer.write((head + "Content-Type: application/json\r\n\r\n").encode())
    answered = asyncio.Event()

    async def send_body() -> None:
        writer.write(b'a\r\n{"data": "\r\n')
        try:
            for _ in range(total // chunk):
                if answered.is_set():
                    return
                writer.write(b"%x\r\n%s\r\n" % (chunk, b"x" * chunk))
                await writer.drain()
                await asyncio.sleep(0)  # one pass of the loop: the server (in this process) reads, the reader looks
            writer.write(b'2\r\n"}\r\n0\r\n\r\n')
            await writer.drain()
        except ConnectionError:
            return  # the server closed on us; the reader has its answer, if it sent one

    sending = asyncio.ensure_future(send_body())
    try:
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
        answered.set()
        status_line, _, rest = answer.partition(b"\r\n")
        headers = dict(line.split(": ", 1) for line in rest.decode().strip().split("\r\n") if line)
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("Content-Length", "0"))), WAIT_S)
    finally:
        await sending
        writer.close()
    return int(status_line.split()[1]), headers, body


async def test_a_chunked_body_far_over_max_message_bytes_is_413_too_large(tmp_path):
    """A 2.5 MiB chunked body (no Content-Length) at server.max_message_bytes=64 KiB gets 413
    `too_large` naming the limit as soon as it passes the limit, while it is still being sent.
    Regression: nothing was answered until the body ended, and past twice the limit Tornado's own
    body cap answered first, a 400 with an empty body (a 40 MiB body at the default 16 MiB limit)."""
    async with serve(tmp_path, CHUNKED) as d:
        status, headers, body = await post_chunked(d.port, "/v1/endpoints/echo", 40 * LIMIT)
        error = wire_error(Reply(status, headers, body))
        assert error["code"] == "too_large"
        assert f"max_message_bytes={LIMIT}" in error["message"]
        assert (await d.post("echo", "still serving")).json()["data"] == "still serving"
        outcomes = [e["outcome"] for e in d.log_events() if e.get("event") == "request"]
        assert outcomes == ["completed"], "the refused body was never admitted"


async def test_a_chunked_body_over_the_limit_sent_whole_before_reading_still_gets_413(tmp_path):
    """A client that sends its whole chunked body before reading (Tornado's, Python's http.client)
    still gets the 413: the rest of the body is read and dropped, not cut off by a reset."""

    async def produce(write: Any) -> None:
        for _ in range(LIMIT // 1024 + 32):
            await write(b"x" * 1024)

    async with serve(tmp_path, CHUNKED) as d:
        request = HTTPRequest(
            d.url + "/v1/endpoints/echo", method="POST", body_producer=produce, request_timeout=WAIT_S
        )
        with pytest.raises(HTTPClientError) as refused:
            await AsyncHTTPClient().fetch(request)
        assert refused.value.response is not None
        reply = Reply(refused.value.code, refused.value.response.headers, refused.value.response.body)
        assert wire_error(reply)["code"] == "too_large"
