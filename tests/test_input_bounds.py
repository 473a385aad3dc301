"""Inputs that are too deep or too large to check cheaply, and results too deep to encode.

Regressions of the "foundations" issue: 1,000-deep data to an endpoint with an input_schema
raised RecursionError in validation (HTTP 500 blaming the model; on the websocket the connection
dropped, cancelling the client's other requests); a 1,000,000-item list took 15.8 s to refuse,
with a 3 MB message, while every other endpoint waited; and a result too deep to encode was
reported as "examples.echo:echo raised RecursionError".
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Iterator
from typing import Any

from servd.inputs import validation
from servd.runners.entrypoints import Model
from servd.runners.execution import execute
from servd.runners.seam import Job
from tests.harness import Running, WsClient, serve

CONFIG = """
version: 1
endpoints:
  typed:
    entrypoint: examples.echo:echo
    input_schema: {type: array, items: {type: [number, array]}}
  numbers:
    entrypoint: examples.echo:echo
    input_schema: {type: array, items: {type: number}}
  short:
    entrypoint: examples.echo:echo
    input_schema: {type: array, maxItems: 1000}
  echo:
    entrypoint: examples.echo:echo
  sleep:
    entrypoint: examples.faults:sleep
  nested:
    entrypoint: examples.faults:nested
"""


def nested_list(depth: int) -> Any:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def deep_text(depth: int) -> str:
    return "[" * depth + "]" * depth


def submit_text(id: Any, endpoint: str, data_text: str) -> str:
    """A submit with its data spliced in as text (json.dumps itself can't write 1,000 levels)."""
    return json.dumps({"type": "submit", "id": id, "endpoint": endpoint, "data": "@"}).replace('"@"', data_text)


def terminal_count(ws: WsClient) -> collections.Counter[Any]:
    return collections.Counter(m["id"] for m in ws.terminals())


# -- nesting depth: server.max_depth ------------------------------------------------------------


async def test_thousand_deep_data_on_the_websocket_is_a_bad_request_and_the_socket_lives(tmp_path):
    """1,000-deep data to an endpoint with an input_schema gets bad_request naming server.max_depth,
    with its id; the connection stays open and the client's request in flight still completes."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        await ws.submit("busy", "sleep", 0.3)
        await ws.wait_for(lambda m: m.get("id") == "busy" and m["type"] == "started")
        await ws.send(submit_text("deep", "typed", deep_text(1000)))
        error = await ws.terminal("deep")
        assert error["error"]["code"] == "bad_request"
        assert "server.max_depth=128" in error["error"]["message"]
        assert (await ws.terminal("busy"))["type"] == "completed"
        assert terminal_count(ws) == {"busy": 1, "deep": 1}
        assert not ws.closed


async def test_data_at_max_depth_is_served_and_one_level_more_is_refused(tmp_path):
    """Data nested exactly server.max_depth levels is served; one level deeper gets bad_request."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        await ws.send(submit_text("at", "typed", deep_text(128)))
        await ws.send(submit_text("over", "typed", deep_text(129)))
        done = await ws.terminal("at")
        assert done["type"] == "completed" and done["data"] == nested_list(128)
        assert (await ws.terminal("over"))["error"]["code"] == "bad_request"


async def test_thousand_deep_data_over_http_and_sse_is_400_bad_request(tmp_path):
    """Over HTTP, with and without Accept: text/event-stream, 1,000-deep data is refused with 400
    bad_request naming server.max_depth, before the model or the schema sees it; nothing is logged
    as an error."""
    async with serve(tmp_path, CONFIG) as d:
        body = ('{"data":' + deep_text(1000) + "}").encode()
        for headers in ({}, {"Accept": "text/event-stream"}):
            reply = await d.http("POST", "/v1/endpoints/typed", raw=body, headers=headers)
            assert reply.status == 400, reply.body[:300]
            error = reply.json()["error"]
            assert error["code"] == "bad_request"
            assert "server.max_depth=128" in error["message"]


async def test_max_depth_is_a_setting(tmp_path):
    """server.max_depth sets the limit: with 4, data 4 deep is served and 5 deep is refused, naming 4."""
    config = CONFIG.replace("version: 1\n", "version: 1\nserver: {max_depth: 4}\n")
    async with serve(tmp_path, config) as d:
        assert (await d.post("echo", nested_list(4))).json()["data"] == nested_list(4)
        reply = await d.post("echo", nested_list(5))
        assert reply.status == 400
        assert "server.max_depth=4" in reply.json()["error"]["message"]


async def test_data_too_deep_for_the_validator_is_invalid_input_not_a_crash(tmp_path):
    """With server.max_depth raised to 1000 and a recursive input_schema, 600-deep data overflows
    the validator's recursion: invalid_input saying so (and naming server.max_depth), not a 500 or
    a dropped connection."""
    config = """
    version: 1
    server: {max_depth: 1000}
    endpoints:
      tree:
        entrypoint: examples.echo:echo
        input_schema: {$defs: {node: {type: array, items: {$ref: "#/$defs/node"}}}, $ref: "#/$defs/node"}
    """
    async with serve(tmp_path, config) as d:
        ws = await d.ws()
        await ws.send(submit_text("deep", "tree", deep_text(600)))
        error = (await ws.terminal("deep"))["error"]
        assert error["code"] == "invalid_input"
        assert "server.max_depth" in error["message"]
        await ws.submit("after", "tree", [[], [[]]])
        assert (await ws.terminal("after"))["type"] == "completed"


# -- large inputs: validation off the loop, short messages ----------------------------------------


MILLION = "[" + ",".join(["1"] * 1_000_000) + "]"  # 2 MB, under the default max_message_bytes


async def echo_latencies_while(d: Running, ws: WsClient, id: str) -> list[float]:
    """Time HTTP calls to the `echo` endpoint, one after another, until request `id` on `ws` ends."""
    loop = asyncio.get_running_loop()
    latencies = []
    while not ws.of(id) or ws.of(id)[-1]["type"] not in ("completed", "error"):
        sent = loop.time()
        reply = await d.post("echo", "ping")
        assert reply.status == 200
        latencies.append(loop.time() - sent)
    return latencies


async def test_a_million_item_list_with_an_input_schema_does_not_hold_up_other_endpoints(tmp_path):
    """A 1,000,000-item list to an endpoint with an input_schema (seconds of jsonschema) is checked
    on a worker thread: meanwhile another endpoint answers every call within a second, and the big
    request then completes, once."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        await ws.send(submit_text("big", "numbers", MILLION))
        latencies = await echo_latencies_while(d, ws, "big")
        done = await ws.terminal("big")
        assert done["type"] == "completed" and len(done["data"]) == 1_000_000
        assert max(latencies) < 1.0, latencies
        assert terminal_count(ws) == {"big": 1}


async def test_a_million_item_list_failing_input_schema_gets_a_short_invalid_input(tmp_path):
    """A 1,000,000-item list over maxItems gets invalid_input whose message names the keyword and
    the list's length in under 500 characters, instead of quoting the 2 MB list; over HTTP, 422."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        await ws.send(submit_text("big", "short", MILLION))
        error = (await ws.terminal("big"))["error"]
        assert error["code"] == "invalid_input"
        assert len(error["message"]) <= 500
        assert "maxItems" in error["message"] and "1000000 items" in error["message"]
        reply = await d.http("POST", "/v1/endpoints/short", raw=('{"data":' + MILLION + "}").encode())
        assert reply.status == 422
        assert reply.json()["error"]["message"] == error["message"]


async def test_small_data_failing_input_schema_is_still_refused_before_admission(tmp_path):
    """Data under validation.INLINE_BYTES is checked on admission: refused with invalid_input and
    no queued message, with jsonschema's own words."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        await ws.submit("small", "numbers", [1, "two"])
        error = await ws.terminal("small")
        assert error["error"] == {"code": "invalid_input", "message": "data[1]: 'two' is not of type 'number'"}
        assert [m["type"] for m in ws.of("small")] == ["error"]


async def test_a_large_invalid_input_in_a_batch_fails_alone_and_the_model_never_sees_it(tmp_path):
    """In a batch, an input too large to check on admission and failing input_schema ends with
    invalid_input; the others complete from one call without it (timing.batch_size 3)."""
    config = """
    version: 1
    endpoints:
      batched:
        entrypoint: examples.faults:fail_on_odd_batch
        batch: {max_size: 4, max_delay_ms: 5000, wait: always}
        input_schema: {anyOf: [{type: integer}, {type: array, maxItems: 10}]}
    """
    large = list(range(validation.INLINE_BYTES))  # over INLINE_BYTES of JSON, and over maxItems
    async with serve(tmp_path, config) as d:
        ws = await d.ws()
        for id, data in enumerate([0, large, 2, 4]):
            await ws.submit(id, "batched", data, progress=False)
        ends = [await ws.terminal(id) for id in range(4)]
        assert ends[1]["error"]["code"] == "invalid_input"
        assert len(ends[1]["error"]["message"]) <= 500
        completed = [ends[0], ends[2], ends[3]]
        assert [e["data"] for e in completed] == [{"value": v, "batch": 3} for v in (0, 2, 4)]
        assert [e["timing"]["batch_size"] for e in completed] == [3, 3, 3]
        assert terminal_count(ws) == dict.fromkeys(range(4), 1)


def test_partials_of_a_batch_missing_an_invalid_input_reach_the_right_requests():
    """A batched generator called without the input that failed its late check streams each
    partial to the input it belongs to (positions in the job, not in the shorter call)."""

    def doubles(items: list[int]) -> Iterator[list[int]]:
        yield [2 * item for item in items]

    check = validation.InputCheck({"type": "integer"})
    job = Job(
        model=Model(doubles, "cpu", streams=True),
        inputs=[1, validation.Unchecked("two", check), 3],
        batched=True,
        on_partial=lambda offset, texts: None,
        on_done=lambda result: None,
        is_wanted=lambda: True,
    )
    emitted: list[tuple[int, list[str]]] = []
    result = execute(job, lambda offset, texts: emitted.append((offset, texts)))
    assert emitted == [(0, ["2"]), (2, ["6"])]
    assert [o.data_json for o in result.outcomes] == ["2", None, "6"]
    assert isinstance(result.outcomes[1].error, validation.InvalidInput)
    assert [o.batch_size for o in result.outcomes] == [2, 0, 2]


# -- results servd can't encode ---------------------------------------------------------------------


async def test_a_result_too_deep_to_encode_is_blamed_on_servd_not_the_entrypoint(tmp_path):
    """An entrypoint returning 5,000-deep data (valid JSON the encoder can't write) fails with
    endpoint_failed saying servd could not encode its result and how deep it was; the log says
    the same, and nothing calls it "entrypoint raised"."""
    async with serve(tmp_path, CONFIG, expect_errors=True) as d:
        reply = await d.post("nested", 5000)
        assert reply.status == 500
        message = reply.json()["error"]["message"]
        assert message.startswith("servd could not encode the result of examples.faults:nested as JSON")
        assert "5000 levels" in message
        assert "raised" not in message
        ws = await d.ws()
        await ws.submit("deep", "nested", 5000)
        assert (await ws.terminal("deep"))["error"]["message"] == message
        assert (await d.post("nested", 3)).json()["data"] == [[[]]]
        events = [e["event"] for e in d.errors_logged()]
        assert events == ["servd could not encode a result"] * 2
