"""The HTTP API as a client sees it: POST results, every error code with its status, SSE, and
the operator GETs (DESIGN.md §4)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from tests.harness import WAIT_S, Reply, Running, eventually, serve
from tests.test_ws import GATE

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
  odd:
    entrypoint: examples.faults:fail_on_odd
  typed:
    entrypoint: examples.echo:echo
    input_schema:
      type: object
      required: [n]
      properties:
        n: {type: integer}
        tags: {type: array, items: {type: string}}
  closed:
    entrypoint: examples.echo:echo
    api_open: false
  gate:
    entrypoint: tests.test_ws:GATE
    concurrency: 1
  small:
    entrypoint: tests.test_ws:GATE
    concurrency: 1
    queue: {max_size: 1}
  perclient:
    entrypoint: tests.test_ws:GATE
    concurrency: 1
    queue: {max_per_client: 1}
  slow:
    entrypoint: tests.test_ws:GATE
    queue: {timeout_s: 0.3}
"""

SSE = {"Accept": "text/event-stream"}


def error_of(reply: Reply) -> dict[str, Any]:
    body = reply.json()
    assert set(body) == {"error"}, body
    return body["error"]


def sse_events(reply: Reply) -> list[tuple[str, dict[str, Any]]]:
    """(event name, parsed data) of each server-sent event in the body."""
    events = []
    for block in reply.body.decode().split("\n\n"):
        if block.strip():
            fields = dict(line.split(": ", 1) for line in block.splitlines())
            events.append((fields["event"], json.loads(fields["data"])))
    return events


async def hold_gate_and_queue_one(d: Running, endpoint: str) -> None:
    """One request running (held at the gate) and one waiting on `endpoint`, both over websocket."""
    ws = await d.ws()
    await ws.submit("running", endpoint, "running")
    await ws.wait_for(lambda m: m.get("id") == "running" and m["type"] == "started")
    await ws.submit("waiting", endpoint, "waiting")
    await ws.wait_for(lambda m: m.get("id") == "waiting" and m["type"] == "queued")


# -- success -----------------------------------------------------------------------------------


async def test_post_returns_the_data_and_its_timing(tmp_path):
    """POST {"data": ...} answers 200 with the entrypoint's result and timing (queue_s, run_s, batch_size)."""
    async with serve(tmp_path, CONFIG) as d:
        reply = await d.post("echo", {"a": [1, 2.5, None, "x"]})
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("application/json")
        body = reply.json()
        assert body["data"] == {"a": [1, 2.5, None, "x"]}
        timing = body["timing"]
        assert set(timing) == {"queue_s", "run_s", "batch_size"}
        assert timing["batch_size"] == 1
        assert timing["queue_s"] >= 0
        assert timing["run_s"] >= 0


async def test_post_of_null_data_is_served(tmp_path):
    """{"data": null} is a valid request: the entrypoint gets None."""
    async with serve(tmp_path, CONFIG) as d:
        reply = await d.post("echo", None)
        assert reply.status == 200
        assert reply.json()["data"] is None


# -- errors, one per code -----------------------------------------------------------------------


async def test_body_that_is_not_json_is_bad_request_400(tmp_path):
    """A body that doesn't parse as JSON gets 400 bad_request."""
    async with serve(tmp_path, CONFIG) as d:
        reply = await d.http("POST", "/v1/endpoints/echo", raw=b'{"data": ')
        assert reply.status == 400
        assert error_of(reply)["code"] == "bad_request"


async def test_body_without_data_is_bad_request_400(tmp_path):
    """A JSON body that is not an object with "data" gets 400 bad_request saying what is expected."""
    async with serve(tmp_path, CONFIG) as d:
        for body in ([1, 2], {"input": 1}, "data"):
            reply = await d.http("POST", "/v1/endpoints/echo", body)
            assert reply.status == 400, body
            error = error_of(reply)
            assert error["code"] == "bad_request"
            assert '{"data": ...}' in error["message"]
        empty = await d.http("POST", "/v1/endpoints/echo", raw=b"")
        assert empty.status == 400


async def test_body_with_nan_is_bad_request_400(tmp_path):
    """NaN and Infinity are not JSON: a body carrying them gets 400 bad_request, as on the websocket."""
    async with serve(tmp_path, CONFIG) as d:
        for raw in (b'{"data": NaN}', b'{"data": [1, -Infinity]}'):
            reply = await d.http("POST", "/v1/endpoints/echo", raw=raw)
            assert reply.status == 400, raw
            assert error_of(reply)["code"] == "bad_request"


async def test_other_methods_get_405_in_json(tmp_path):
    """A method a route doesn't serve gets 405 with a JSON error body."""
    async with serve(tmp_path, CONFIG) as d:
        for method, path in (("PUT", "/v1/endpoints/echo"), ("POST", "/v1/status"), ("DELETE", "/healthz")):
            reply = await d.http(method, path, {"data": 1})
            assert reply.status == 405, (method, path)
            assert "error" in reply.json()


async def test_api_closed_endpoint_refuses_http_with_403(tmp_path):
    """POST to an endpoint with api_open: false gets 403 api_closed."""
    async with serve(tmp_path, CONFIG) as d:
        reply = await d.post("closed", 1)
        assert reply.status == 403
        assert error_of(reply)["code"] == "api_closed"


async def test_unknown_endpoint_is_404(tmp_path):
    """POST and GET of a missing endpoint get 404 unknown_endpoint."""
    async with serve(tmp_path, CONFIG) as d:
        for reply in (await d.post("nope", 1), await d.http("GET", "/v1/endpoints/nope")):
            assert reply.status == 404
            error = error_of(reply)
            assert error["code"] == "unknown_endpoint"
            assert "nope" in error["message"]


async def test_body_over_max_message_bytes_is_413(tmp_path):
    """A body whose Content-Length is over server.max_message_bytes gets 413 too_large naming the limit."""
    async with serve(tmp_path, CONFIG) as d:
        reply = await d.post("echo", "x" * 1500)
        assert reply.status == 413
        error = error_of(reply)
        assert error["code"] == "too_large"
        assert "max_message_bytes=1024" in error["message"]


async def test_chunked_body_over_max_message_bytes_is_413(tmp_path):
    """A body sent without Content-Length (chunked) that grows past the limit also gets 413 too_large."""

    async def produce(write: Any) -> None:
        await write(b'{"data": "' + b"x" * 800)
        await write(b"x" * 800 + b'"}')

    async with serve(tmp_path, CONFIG) as d:
        request = HTTPRequest(
            d.url + "/v1/endpoints/echo", method="POST", body_producer=produce, request_timeout=WAIT_S
        )
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as exc:
            assert exc.response is not None
            response = exc.response
        assert response.code == 413
        assert json.loads(response.body)["error"]["code"] == "too_large"


async def test_data_failing_input_schema_is_422_naming_the_path(tmp_path):
    """Data that fails the endpoint's input_schema gets 422 invalid_input; the message names the path."""
    async with serve(tmp_path, CONFIG) as d:
        reply = await d.post("typed", {"n": "seven"})
        assert reply.status == 422
        error = error_of(reply)
        assert error["code"] == "invalid_input"
        assert "data['n']" in error["message"]
        nested = error_of(await d.post("typed", {"n": 1, "tags": ["a", 2]}))
        assert "data['tags'][1]" in nested["message"]
        assert (await d.post("typed", {"n": 7})).json()["data"] == {"n": 7}


async def test_client_over_max_per_client_is_429(tmp_path):
    """A client that already has queue.max_per_client requests waiting gets 429 client_limit."""
    async with serve(tmp_path, CONFIG) as d:
        with GATE.shut():
            await hold_gate_and_queue_one(d, "perclient")
            reply = await d.post("perclient", "third")
            assert reply.status == 429
            error = error_of(reply)
            assert error["code"] == "client_limit"
            assert "max_per_client=1" in error["message"]


async def test_entrypoint_exception_is_500_naming_it_without_a_traceback(tmp_path):
    """An entrypoint that raises gives 500 endpoint_failed naming the exception; no traceback in the body."""
    async with serve(tmp_path, CONFIG, expect_errors=True) as d:
        reply = await d.post("odd", 3)
        assert reply.status == 500
        error = error_of(reply)
        assert error["code"] == "endpoint_failed"
        assert "ValueError" in error["message"]
        assert "odd input 3" in error["message"]
        assert b"Traceback" not in reply.body
        assert b'File "' not in reply.body
        assert (await d.post("odd", 4)).status == 200


async def test_full_queue_is_503_with_retry_after(tmp_path):
    """When queue.max_size requests wait, a POST gets 503 queue_full at once, with a Retry-After header."""
    async with serve(tmp_path, CONFIG) as d:
        with GATE.shut():
            await hold_gate_and_queue_one(d, "small")
            reply = await d.post("small", "one too many")
            assert reply.status == 503
            error = error_of(reply)
            assert error["code"] == "queue_full"
            assert "max_size=1" in error["message"]
            assert int(reply.headers["Retry-After"]) >= 1


async def test_post_while_the_daemon_shuts_down_is_503_unavailable(tmp_path):
    """Once shutdown has begun (draining admitted work), a new POST gets 503 unavailable, and the
    request being drained still completes."""
    async with serve(tmp_path, CONFIG) as d:
        with GATE.shut():
            ws = await d.ws()
            await ws.submit("draining", "gate", "finishes")
            await ws.wait_for(lambda m: m.get("id") == "draining" and m["type"] == "started")
            stopping = asyncio.ensure_future(d.daemon.shutdown())
            await eventually(lambda: d.daemon.shutting_down, "shutdown to begin")
            reply = await d.post("echo", 1)
            assert reply.status == 503
            assert error_of(reply)["code"] == "unavailable"
            assert (await d.http("GET", "/readyz")).status == 503
            GATE.open()
            assert (await ws.terminal("draining"))["data"] == "finishes"
            await asyncio.wait_for(stopping, WAIT_S)


async def test_request_past_timeout_s_is_504(tmp_path):
    """A request still running when queue.timeout_s passes gets 504 timeout naming the limit."""
    async with serve(tmp_path, CONFIG) as d:
        with GATE.shut():
            reply = await d.post("slow", "never in time")
            assert reply.status == 504
            error = error_of(reply)
            assert error["code"] == "timeout"
            assert "timeout_s=0.3" in error["message"]


@pytest.mark.parametrize("headers", [{}, SSE], ids=["json", "sse"])
async def test_client_hanging_up_cancels_its_request(tmp_path, headers):
    """A POST (plain or SSE) whose client disconnects before the end is cancelled; its input never runs."""
    async with serve(tmp_path, CONFIG) as d:
        with GATE.shut():
            ws = await d.ws()
            await ws.submit("running", "gate", "running")
            await ws.wait_for(lambda m: m.get("id") == "running" and m["type"] == "started")
            with pytest.raises(HTTPClientError) as gave_up:
                await d.post("gate", "abandoned", headers=headers, timeout=1.0)
            assert gave_up.value.code == 599

            def ended() -> list[str]:
                return [e["outcome"] for e in d.log_events() if e.get("event") == "request"]

            await eventually(lambda: ended() == ["cancelled"], "the abandoned request to end")
            GATE.open()
            await ws.terminal("running")
        assert "abandoned" not in GATE.calls


# -- server-sent events ------------------------------------------------------------------------


async def test_sse_streams_queued_started_partials_completed_in_order(tmp_path):
    """With Accept: text/event-stream a streaming endpoint's messages arrive as SSE events, in order:
    queued, started, one partial per yield, completed; each event is named for its message type."""
    async with serve(tmp_path, CONFIG) as d:
        reply = await d.http("POST", "/v1/endpoints/words", {"data": {"text": "a b c", "delay_s": 0.001}}, SSE)
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/event-stream")
        events = sse_events(reply)
        assert [name for name, _ in events] == ["queued", "started", "partial", "partial", "partial", "completed"]
        assert all(name == data["type"] for name, data in events)
        assert [data["data"] for name, data in events if name == "partial"] == ["a", "a b", "a b c"]
        assert events[-1][1]["data"] == "a b c"
        assert events[-1][1]["timing"]["batch_size"] == 1
        assert len({data["id"] for _, data in events}) == 1


async def test_sse_failure_arrives_as_an_error_event(tmp_path):
    """Over SSE an entrypoint failure ends the stream with one error event (endpoint_failed)."""
    async with serve(tmp_path, CONFIG, expect_errors=True) as d:
        reply = await d.http("POST", "/v1/endpoints/odd", {"data": 3}, SSE)
        events = sse_events(reply)
        assert [name for name, _ in events] == ["queued", "started", "error"]
        assert events[-1][1]["error"]["code"] == "endpoint_failed"
        assert "ValueError" in events[-1][1]["error"]["message"]


async def test_sse_refusal_at_admission_is_a_plain_http_error(tmp_path):
    """Over SSE a request refused at admission (here invalid_input) gets the plain 422 and JSON
    error body, as without SSE: nothing had been sent (tests/test_error_shapes.py has the rule)."""
    async with serve(tmp_path, CONFIG) as d:
        reply = await d.http("POST", "/v1/endpoints/typed", {"data": {"n": "x"}}, SSE)
        assert reply.status == 422
        assert error_of(reply)["code"] == "invalid_input"


# -- operator endpoints ------------------------------------------------------------------------


async def test_get_endpoints_lists_each_with_config_and_stats(tmp_path):
    """GET /v1/endpoints lists every endpoint with its effective config and live stats."""
    async with serve(tmp_path, CONFIG) as d:
        await d.post("echo", 1)
        reply = await d.http("GET", "/v1/endpoints")
        assert reply.status == 200
        listed = {e["name"]: e for e in reply.json()["endpoints"]}
        assert set(listed) == {"echo", "words", "odd", "typed", "closed", "gate", "small", "perclient", "slow"}
        echo = listed["echo"]
        assert echo["entrypoint"] == "examples.echo:echo"
        assert echo["concurrency"] == 1
        assert listed["small"]["queue"]["max_size"] == 1
        assert listed["closed"]["api_open"] is False
        stats = echo["stats"]
        for key in ("queued", "running", "workers", "batch_size", "eta_s", "latency_s"):
            assert key in stats
        assert stats["completed"] == 1
        assert set(stats["latency_s"]) == {"p50", "p99"}


async def test_get_one_endpoint(tmp_path):
    """GET /v1/endpoints/{name} shows that endpoint alone."""
    async with serve(tmp_path, CONFIG) as d:
        reply = await d.http("GET", "/v1/endpoints/typed")
        assert reply.status == 200
        body = reply.json()
        assert body["name"] == "typed"
        assert body["input_schema"]["required"] == ["n"]
        assert body["stats"]["queued"] == 0


async def test_status_shows_config_generation_and_uptime(tmp_path):
    """GET /v1/status gives the config path, generation 1 at start, readiness and uptime."""
    async with serve(tmp_path, CONFIG) as d:
        reply = await d.http("GET", "/v1/status")
        assert reply.status == 200
        status = reply.json()
        assert status["config"] == str(d.config_path)
        assert status["generation"] == 1
        assert status["ready"] is True
        assert status["uptime_s"] >= 0
        assert status["last_reload"] is None


async def test_health_and_readiness(tmp_path):
    """/healthz says alive and /readyz says ready, both 200, once the endpoints are loaded."""
    async with serve(tmp_path, CONFIG) as d:
        health = await d.http("GET", "/healthz")
        ready = await d.http("GET", "/readyz")
        assert (health.status, health.json()["status"]) == (200, "alive")
        assert (ready.status, ready.json()["status"]) == (200, "ready")


def requests_total(text: str) -> dict[tuple[str, str], float]:
    pattern = re.compile(r'^servd_requests_total\{endpoint="([^"]+)",outcome="([^"]+)"\} (\S+)$', re.M)
    return {(ep, outcome): float(value) for ep, outcome, value in pattern.findall(text)}


async def test_metrics_count_requests_by_endpoint_and_outcome(tmp_path):
    """/metrics is Prometheus text with servd_requests_total labelled by endpoint and outcome."""
    async with serve(tmp_path, CONFIG, expect_errors=True) as d:
        for value in (2, 4, 3):
            await d.post("odd", value)
        await d.post("echo", 1)
        reply = await d.http("GET", "/metrics")
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.body.decode()
        counts = requests_total(text)
        assert counts[("odd", "completed")] == 2
        assert counts[("odd", "endpoint_failed")] == 1
        assert counts[("echo", "completed")] == 1
        assert "# TYPE servd_requests_total counter" in text


def histogram(text: str, name: str, endpoint: str) -> tuple[dict[str, float], float, float]:
    """({le: cumulative count}, count, sum) of one endpoint's histogram in /metrics text."""
    buckets = {
        le: float(v)
        for le, v in re.findall(rf'^{name}_bucket\{{endpoint="{endpoint}",le="([^"]+)"\}} (\S+)$', text, re.M)
    }
    count = re.search(rf'^{name}_count\{{endpoint="{endpoint}"\}} (\S+)$', text, re.M)
    total = re.search(rf'^{name}_sum\{{endpoint="{endpoint}"\}} (\S+)$', text, re.M)
    assert count and total, text
    return buckets, float(count.group(1)), float(total.group(1))


async def test_metrics_histograms_count_every_completed_request_in_cumulative_buckets(tmp_path):
    """servd_batch_size counts every call; servd_queue_seconds and servd_run_seconds every completed
    request. Buckets are cumulative with `le` inclusive (a batch of exactly 1 is in le="1.0")."""
    async with serve(tmp_path, CONFIG, expect_errors=True) as d:
        for value in (2, 4, 6, 3):  # the odd one fails: a call, but no completed request
            await d.post("odd", value)
        text = (await d.http("GET", "/metrics")).body.decode()
    buckets, count, total = histogram(text, "servd_batch_size", "odd")
    assert (count, total, buckets["1.0"], buckets["+Inf"]) == (4.0, 4.0, 4.0, 4.0)
    for name in ("servd_queue_seconds", "servd_run_seconds"):
        buckets, count, total = histogram(text, name, "odd")
        assert count == buckets["+Inf"] == 3.0
        assert 0 <= total < 60
        values = list(buckets.values())
        assert values == sorted(values), buckets  # cumulative


async def test_unknown_route_is_404_json(tmp_path):
    """A path that is no route gets a JSON 404."""
    async with serve(tmp_path, CONFIG) as d:
        reply = await d.http("GET", "/v2/whatever")
        assert reply.status == 404
        assert "error" in reply.json()
