"""OpenAI-compatible chat (issue 14), as the official `openai` client sees it.

Endpoints with an `openai:` block answer POST /v1/chat/completions (whole or streamed) and are
listed on GET /v1/models; they go through the same queue, so a waiting stream carries its rank and
ETA as SSE comments; errors are the client's typed exceptions. The entrypoints below are held by
`CHAT_GATE` where a test needs "this one runs, that one waits" as a fact rather than a race.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import openai
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from examples.chat import chat
from servd.config.spec import SpecError, parse
from tests.harness import WAIT_S, Running, eventually, serve, write_config

CHAT_GATE = threading.Event()
CHAT_GATE.set()
CALLS: list[dict[str, Any]] = []  # requests the gated and endless entrypoints were called with
TICKS: list[int] = []


def gated_chat(request: dict[str, Any]) -> Iterator[Any]:
    """Waits for CHAT_GATE, then answers "Hello world" in two pieces and reports its usage."""
    CALLS.append(request)
    CHAT_GATE.wait(WAIT_S)
    yield "Hello"
    yield {"text": " world", "usage": {"prompt_tokens": 3, "completion_tokens": 2}}


TICKETS = threading.Semaphore(0)


def ticketed_chat(request: dict[str, Any]) -> Iterator[Any]:
    """Like gated_chat, but each call waits for a ticket of its own: the test lets them go one by one."""
    CALLS.append(request)
    TICKETS.acquire(timeout=WAIT_S)
    yield "Hello"
    yield " world"


def endless_chat(request: dict[str, Any]) -> Iterator[str]:
    """Says "tick " every 10 ms for up to WAIT_S: only a cancel ends it early."""
    CALLS.append(request)
    for tick in range(int(WAIT_S / 0.01)):
        TICKS.append(tick)
        yield "tick "
        time.sleep(0.01)


def describe(request: dict[str, Any]) -> str:
    """Returns (not yields) the data it was called with, as JSON text."""
    return json.dumps(request, sort_keys=True)


def broken_chat(request: dict[str, Any]) -> str:
    CALLS.append(request)
    raise ValueError("the toy model is broken")


def fails_midway(request: dict[str, Any]) -> Iterator[str]:
    yield "Hello"
    raise ValueError("lost its train of thought")


def returns_a_number(request: dict[str, Any]) -> int:
    return 42


CONFIG = """
version: 1
server:
  drain_timeout_s: 5
endpoints:
  toy:
    entrypoint: examples.chat:chat
    openai: {}
  batched:
    entrypoint: examples.chat:ToyChat
    batch: {max_size: 4, max_delay_ms: 10000, wait: always}
    openai: {model: toy-batched}
  gated:
    entrypoint: tests.test_openai:gated_chat
    openai: {model: gated}
  ticketed:
    entrypoint: tests.test_openai:ticketed_chat
    openai: {model: ticketed}
  small:
    entrypoint: tests.test_openai:gated_chat
    queue: {max_size: 1}
    openai: {model: small}
  endless:
    entrypoint: tests.test_openai:endless_chat
    openai: {model: endless}
  describe:
    entrypoint: tests.test_openai:describe
    openai: {model: describe}
  broken:
    entrypoint: tests.test_openai:broken_chat
    openai: {model: broken}
  midway:
    entrypoint: tests.test_openai:fails_midway
    openai: {model: midway}
  number:
    entrypoint: tests.test_openai:returns_a_number
    openai: {model: number}
  closed:
    entrypoint: examples.chat:chat
    api_open: false
    openai: {model: closed}
  echo:
    entrypoint: examples.echo:echo
"""

QUESTION = [{"role": "user", "content": "what is a batch?"}]


@contextmanager
def gate_shut() -> Iterator[None]:
    CHAT_GATE.clear()
    CALLS.clear()
    try:
        yield
    finally:
        CHAT_GATE.set()


@asynccontextmanager
async def client(d: Running, **options: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    options.setdefault("api_key", "unused")
    options.setdefault("max_retries", 0)
    async with openai.AsyncOpenAI(base_url=d.url + "/v1", **options) as c:
        yield c


def toy_answer(**request: Any) -> tuple[str, dict[str, Any]]:
    """The toy model's answer in-process: its text and its last (usage, finish_reason) value."""
    data = {"messages": QUESTION, "max_tokens": None, "stop": [], **request}
    steps = list(chat(data))
    return "".join(s for s in steps if isinstance(s, str)), steps[-1]


# -- answers -----------------------------------------------------------------------------------


async def test_a_chat_completion_is_the_entrypoints_answer_in_openais_shape(tmp_path):
    """A non-streaming request gets a chat.completion: the toy model's text as the assistant's
    message, finish_reason stop, usage from the entrypoint's counts, and servd's timing."""
    text, last = toy_answer(temperature=0)
    async with serve(tmp_path, CONFIG) as d, client(d) as c:
        answer = await c.chat.completions.create(model="toy", messages=QUESTION, temperature=0)
    assert answer.object == "chat.completion" and answer.model == "toy"
    assert [choice.message.content for choice in answer.choices] == [text]
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (4, last["usage"]["completion_tokens"])
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert answer.servd["timing"]["batch_size"] == 1  # type: ignore[attr-defined]


async def test_max_tokens_cuts_the_answer_with_finish_reason_length(tmp_path):
    """An answer cut by max_tokens (or max_completion_tokens) ends with finish_reason length."""
    async with serve(tmp_path, CONFIG) as d, client(d) as c:
        for cap in ({"max_tokens": 3}, {"max_completion_tokens": 3}):
            answer = await c.chat.completions.create(model="toy", messages=QUESTION, temperature=0, **cap)
            assert answer.choices[0].finish_reason == "length"
            assert answer.usage is not None and answer.usage.completion_tokens == 3
            assert len(answer.choices[0].message.content.split()) == 3


async def test_a_streamed_completion_sends_each_piece_as_a_delta_then_done(tmp_path):
    """stream: true gets chat.completion.chunk events: the role first, then one delta per yielded
    piece (together the whole answer), the finish_reason, and the usage chunk when asked for."""
    text, last = toy_answer(temperature=0)
    async with serve(tmp_path, CONFIG) as d, client(d) as c:
        stream = await c.chat.completions.create(
            model="toy", messages=QUESTION, temperature=0, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk.id for chunk in chunks}) == 1
    with_choices = [chunk for chunk in chunks if chunk.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    deltas = [chunk.choices[0].delta.content for chunk in with_choices if chunk.choices[0].delta.content]
    assert deltas == [s for s in chat({"messages": QUESTION, "temperature": 0}) if isinstance(s, str)]
    assert "".join(deltas) == text
    assert [chunk.choices[0].finish_reason for chunk in with_choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == last["usage"]["completion_tokens"]


async def test_a_returned_text_is_the_whole_answer_and_the_entrypoint_gets_the_request_as_data(tmp_path):
    """A function that returns text answers with it, whole or as one delta. Its data is the request
    less model, n, stream and servd's own fields, with max_tokens and stop (a list) always there."""
    async with serve(tmp_path, CONFIG) as d, client(d) as c:
        answer = await c.chat.completions.create(
            model="describe", messages=QUESTION, max_completion_tokens=7, stop="END", temperature=0.5, n=1,
            extra_body={"user_tag": "kept", "servd": {"priority": 1}},
        )  # fmt: skip
        stream = await c.chat.completions.create(model="describe", messages=QUESTION, stream=True)
        deltas = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]
    data = json.loads(answer.choices[0].message.content)
    assert data == {"messages": QUESTION, "max_tokens": 7, "stop": ["END"], "temperature": 0.5, "user_tag": "kept"}
    assert json.loads("".join(d for d in deltas if d)) == {"messages": QUESTION, "max_tokens": None, "stop": []}


async def test_models_lists_the_chat_endpoints_and_shows_one(tmp_path):
    """GET /v1/models lists the endpoints with an openai block by model name (an endpoint without
    one is not a model); GET /v1/models/{model} shows one; an unknown one is NotFoundError."""
    async with serve(tmp_path, CONFIG) as d, client(d) as c:
        listed = [model.id async for model in c.models.list()]
        toy = await c.models.retrieve("toy-batched")
        with pytest.raises(openai.NotFoundError) as missing:
            await c.models.retrieve("echo")
        config = (await d.http("GET", "/v1/endpoints/batched")).json()  # the effective config shows it too
    assert listed == ["toy", "toy-batched", "gated", "ticketed", "small", "endless", "describe", "broken", "midway",
                      "number", "closed"]  # fmt: skip
    assert (toy.id, toy.object, toy.owned_by) == ("toy-batched", "model", "servd")
    assert missing.value.body["code"] == "unknown_endpoint"  # type: ignore[index]
    assert config["openai"] == {"model": "toy-batched"}


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_fields", "exception", "param"),
    [
        ({"model": "toy", "messages": QUESTION, "n": 2}, openai.BadRequestError, "n"),
        ({"model": "toy", "messages": []}, openai.BadRequestError, "messages"),
        ({"model": "toy", "messages": QUESTION, "temperature": 7}, openai.BadRequestError, "temperature"),
        ({"model": "nope", "messages": QUESTION}, openai.NotFoundError, "model"),
        ({"model": "closed", "messages": QUESTION}, openai.PermissionDeniedError, None),
        (
            {"model": "toy", "messages": QUESTION, "extra_body": {"servd": {"priority": 2}}},
            openai.BadRequestError,
            None,
        ),
    ],
    ids=["n>1", "no messages", "temperature", "unknown model", "api_open false", "priority beyond the levels"],
)
async def test_refusals_are_typed_exceptions_of_the_openai_client(tmp_path, request_fields, exception, param):
    """A request servd refuses raises the client's exception for its status (400, 404, 403), and
    the error is in OpenAI's shape: message, type, param, and servd's code word."""
    async with serve(tmp_path, CONFIG) as d, client(d) as c:
        with pytest.raises(exception) as refused:
            await c.chat.completions.create(**request_fields)
    body = refused.value.body
    assert isinstance(body, dict) and set(body) == {"message", "type", "param", "code"}
    assert body["param"] == param
    assert body["type"] == (
        "permission_error" if exception is openai.PermissionDeniedError else "invalid_request_error"
    )
    if request_fields.get("n") == 2:
        assert "n=2 is not supported" in body["message"]


async def test_tokens_work_as_the_api_key(tmp_path):
    """With server.tokens_file, the client's api_key is the bearer token: a wrong one raises
    AuthenticationError (on /v1/models too), a listed one is answered."""
    (tmp_path / "tokens.txt").write_text("alpha-secret\n")
    config = CONFIG.replace("  drain_timeout_s: 5\n", "  drain_timeout_s: 5\n  tokens_file: tokens.txt\n")
    async with serve(tmp_path, config) as d:
        async with client(d, api_key="wrong") as c:
            with pytest.raises(openai.AuthenticationError):
                await c.chat.completions.create(model="toy", messages=QUESTION)
            with pytest.raises(openai.AuthenticationError):
                await c.models.list()
        async with client(d, api_key="alpha-secret") as c:
            answer = await c.chat.completions.create(model="toy", messages=QUESTION)
    assert answer.choices[0].message.content


async def hold_one_running_and_one_waiting(c: openai.AsyncOpenAI, model: str) -> list[asyncio.Task[Any]]:
    """Two requests on `model` (one slot, gate shut): the first runs, held; the second waits."""
    running = asyncio.ensure_future(c.chat.completions.create(model=model, messages=QUESTION))
    await eventually(lambda: len(CALLS) == 1, "the first request to run")
    waiting = asyncio.ensure_future(c.chat.completions.create(model=model, messages=QUESTION))
    return [running, waiting]


async def rejected(d: Running, endpoint: str, reason: str) -> int:
    metrics = (await d.http("GET", "/metrics")).body.decode()
    line = f'servd_rejected_total{{endpoint="{endpoint}",reason="{reason}"}} '
    return next((int(float(row.removeprefix(line))) for row in metrics.splitlines() if row.startswith(line)), 0)


async def test_a_full_queue_is_503_with_retry_after(tmp_path):
    """queue.max_size reached: the client gets a 503 (InternalServerError) with Retry-After from
    servd's ETA and code queue_full."""
    async with serve(tmp_path, CONFIG) as d, client(d) as c:
        with gate_shut():
            held = await hold_one_running_and_one_waiting(c, "small")
            await eventually(lambda: d.daemon.endpoints["small"].queue, "the second request to wait")
            with pytest.raises(openai.InternalServerError) as full:
                await c.chat.completions.create(model="small", messages=QUESTION)
        await asyncio.gather(*held)
    assert full.value.status_code == 503
    assert full.value.body["code"] == "queue_full"  # type: ignore[index]
    assert int(full.value.response.headers["retry-after"]) >= 1


async def test_the_client_retries_a_full_queue_after_retry_after(tmp_path):
    """The official client retries a 503, waiting Retry-After seconds: once the queue has room,
    the retry is admitted and answered."""
    async with serve(tmp_path, CONFIG) as d, client(d, max_retries=1) as c:
        with gate_shut():
            held = await hold_one_running_and_one_waiting(c, "small")
            await eventually(lambda: d.daemon.endpoints["small"].queue, "the second request to wait")
            retried = asyncio.ensure_future(c.chat.completions.create(model="small", messages=QUESTION))
            await eventually(lambda: rejected(d, "small", "queue_full"), "the first try to be refused")
            refused_at = time.monotonic()
        answer = await retried
        waited = time.monotonic() - refused_at
        await asyncio.gather(*held)
        assert await rejected(d, "small", "queue_full") == 1
    assert answer.choices[0].message.content == "Hello world"
    assert waited >= 0.9  # Retry-After: 1 (no batch timed yet), honoured


async def test_an_entrypoint_that_raises_is_a_500_the_client_does_not_retry(tmp_path):
    """endpoint_failed is a 500 with x-should-retry: false, so the client (which retries 5xx)
    raises at once instead of running the failing call again."""
    CALLS.clear()
    async with serve(tmp_path, CONFIG, expect_errors=True) as d, client(d, max_retries=2) as c:
        with pytest.raises(openai.InternalServerError) as failed:
            await c.chat.completions.create(model="broken", messages=QUESTION)
    assert failed.value.status_code == 500
    assert failed.value.body["code"] == "endpoint_failed"  # type: ignore[index]
    assert "ValueError: the toy model is broken" in failed.value.message
    assert failed.value.response.headers["x-should-retry"] == "false"
    assert len(CALLS) == 1


async def test_a_failure_after_the_stream_began_raises_from_the_stream(tmp_path):
    """A generator that raises after its first piece: the stream has sent that piece, then an
    error event in OpenAI's shape, which the client raises as APIError."""
    async with serve(tmp_path, CONFIG, expect_errors=True) as d, client(d) as c:
        stream = await c.chat.completions.create(model="midway", messages=QUESTION, stream=True)
        contents = []
        with pytest.raises(openai.APIError) as failed:
            async for chunk in stream:
                contents += [chunk.choices[0].delta.content] if chunk.choices else []
    assert "Hello" in contents
    assert "lost its train of thought" in failed.value.message
    assert failed.value.body["code"] == "endpoint_failed"  # type: ignore[index]


async def test_an_answer_that_is_not_text_is_a_500_naming_the_contract(tmp_path):
    """An entrypoint returning 42 fails its request with a message saying what a chat entrypoint
    returns, and an error log."""
    async with serve(tmp_path, CONFIG, expect_errors=True) as d, client(d) as c:
        with pytest.raises(openai.InternalServerError) as failed:
            await c.chat.completions.create(model="number", messages=QUESTION)
        assert [e["event"] for e in d.errors_logged()] == ["chat entrypoint broke its contract"]
    assert "a chat entrypoint returns or yields text" in failed.value.message
    assert "got 42" in failed.value.message


# -- the queue inside the stream ---------------------------------------------------------------


async def raw_stream(d: Running, model: str, received: list[bytes]) -> None:
    """POST a streamed chat request, keeping the raw SSE bytes as they arrive."""
    body = json.dumps({"model": model, "messages": QUESTION, "stream": True})
    request = HTTPRequest(
        d.url + "/v1/chat/completions", method="POST", body=body, streaming_callback=received.append,
        request_timeout=WAIT_S,
    )  # fmt: skip
    await AsyncHTTPClient().fetch(request)


def sse_lines(received: list[bytes]) -> list[str]:
    return [line for line in b"".join(received).decode().split("\n") if line]


async def test_a_queued_stream_shows_its_rank_as_comments_before_the_first_token(tmp_path):
    """Two streams waiting behind a running request: the second's SSE begins with comments
    (`: {"type":"queued",...,"rank":1}`, an estimation with rank 0 once the queue moves, then
    started), all before its first content chunk; the stream ends with data: [DONE]."""
    CALLS.clear()
    first: list[bytes] = []
    second: list[bytes] = []
    async with serve(tmp_path, CONFIG) as d, client(d) as c:
        try:
            running = asyncio.ensure_future(c.chat.completions.create(model="ticketed", messages=QUESTION))
            await eventually(lambda: len(CALLS) == 1, "the first request to run")
            streams = [asyncio.ensure_future(raw_stream(d, "ticketed", first))]
            await eventually(lambda: b'"rank":0' in b"".join(first), "the first stream's queued comment")
            streams.append(asyncio.ensure_future(raw_stream(d, "ticketed", second)))
            await eventually(lambda: b'"rank":1' in b"".join(second), "the second stream's queued comment")
            assert not any(line.startswith("data:") for line in sse_lines(second)), "nothing but comments yet"
            TICKETS.release()  # the running request ends, the first stream starts: the second is next
            await eventually(lambda: b'"estimation"' in b"".join(second), "the second stream's new rank")
            assert not any(line.startswith("data:") for line in sse_lines(second)), "nothing but comments yet"
        finally:
            TICKETS.release(2)
        await asyncio.gather(running, *streams)
    lines = sse_lines(second)
    comments = [json.loads(line[2:]) for line in lines if line.startswith(": ")]
    assert [(m["type"], m.get("rank")) for m in comments] == [("queued", 1), ("estimation", 0), ("started", None)]
    assert comments[0]["queue_size"] == 2 and "eta_s" in comments[0]
    first_token = next(i for i, line in enumerate(lines) if '"content":"Hello"' in line)
    assert all(line.startswith(": ") for line in lines[: first_token - 1])  # then the role chunk, then tokens
    assert lines[-1] == "data: [DONE]"


async def test_queue_updates_arrive_as_chunks_without_choices_when_asked(tmp_path):
    """With servd.queue_updates, the waiting stream also carries its queue messages as chunks
    with no choices and a `servd` field (rank, queue_size, eta_s), readable with the client."""
    async with serve(tmp_path, CONFIG) as d, client(d) as c:
        with gate_shut():
            running = asyncio.ensure_future(c.chat.completions.create(model="gated", messages=QUESTION))
            await eventually(lambda: len(CALLS) == 1, "the first request to run")
            stream = await c.chat.completions.create(
                model="gated", messages=QUESTION, stream=True, extra_body={"servd": {"queue_updates": True}}
            )
            first = await stream.__anext__()
        chunks = [first] + [chunk async for chunk in stream]
        await running
    updates = [chunk.servd for chunk in chunks if not chunk.choices]  # type: ignore[attr-defined]
    assert updates[0]["type"] == "queued" and updates[0]["rank"] == 0 and updates[0]["queue_size"] == 1
    assert updates[-1]["type"] == "started"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello world"


async def test_closing_the_stream_cancels_the_request(tmp_path):
    """A client that closes its stream mid-answer cancels the request: it ends `cancelled` and the
    generator stops at its next yield (its call ends instead of ticking on)."""
    TICKS.clear()
    async with serve(tmp_path, CONFIG) as d, client(d) as c:
        stream = await c.chat.completions.create(model="endless", messages=QUESTION, stream=True)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        await stream.close()

        async def endpoint() -> dict[str, Any]:
            return (await d.http("GET", "/v1/endpoints/endless")).json()["stats"]  # type: ignore[no-any-return]

        stats = await eventually(endpoint, "the call to end", until=lambda s: s["workers"] == 0)
        assert stats["outcomes"].get("cancelled") == 1
        ended = [e for e in d.log_events() if e["event"] == "request" and e["endpoint"] == "endless"]
    assert [(e["outcome"], e["message"]) for e in ended] == [("cancelled", "the client disconnected")]
    assert len(TICKS) < WAIT_S / 0.01 / 2


async def test_concurrent_chat_requests_share_a_batch(tmp_path):
    """On a batched endpoint, concurrent chat requests run in one call (servd.timing.batch_size),
    and each gets its own answer, the one it would get alone."""
    alone = {max_tokens: toy_answer(temperature=0, max_tokens=max_tokens)[0] for max_tokens in (2, 3, 4, 5)}
    async with serve(tmp_path, CONFIG) as d, client(d) as c:
        answers = await asyncio.gather(
            *(
                c.chat.completions.create(model="toy-batched", messages=QUESTION, temperature=0, max_tokens=n)
                for n in alone
            )
        )
    assert [a.servd["timing"]["batch_size"] for a in answers] == [4, 4, 4, 4]  # type: ignore[attr-defined]
    assert [a.choices[0].message.content for a in answers] == list(alone.values())
    assert [a.choices[0].finish_reason for a in answers] == ["length"] * 4


# -- the openai block --------------------------------------------------------------------------


def test_the_model_name_defaults_to_the_endpoints_name(tmp_path):
    spec = parse(write_config(tmp_path, CONFIG))
    assert spec.endpoints["toy"].openai is not None and spec.endpoints["toy"].openai.model == "toy"
    assert spec.endpoints["batched"].openai is not None and spec.endpoints["batched"].openai.model == "toy-batched"
    assert spec.endpoints["echo"].openai is None


def test_two_endpoints_may_not_serve_one_model_name(tmp_path):
    """A model name must find one endpoint: a second endpoint claiming it is a config error at
    its own openai.model, naming the first."""
    config = CONFIG + "  again:\n    entrypoint: examples.chat:chat\n    openai: {model: gated}\n"
    with pytest.raises(SpecError) as error:
        parse(write_config(tmp_path, config))
    assert "endpoints.again.openai.model: model 'gated' is served by endpoint 'gated' already" in str(error.value)
