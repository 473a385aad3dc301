"""Random and malformed input against one real daemon: every frame gets a documented answer (issue 7).

Each test starts one in-process daemon and runs its hypothesis examples against it: the
examples run on a worker thread and drive the daemon's loop with run_coroutine_threadsafe, so
one daemon (and one websocket) sees every example, as a long-lived client would. After each
example a probe request (an echo submit) marks where that example's answers end: messages on
one socket arrive in order, and the echo endpoint serves one call at a time in FIFO order.

Examples are derandomized and bounded so CI stays fast and repeatable; run a deeper, random
search with SERVD_FUZZ_EXAMPLES=2000 SERVD_FUZZ_RANDOM=1.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servd.errors import ErrorCode
from tests.harness import TERMINAL, Running, WsClient, eventually, serve
from tests.test_ws import Gate

EXAMPLES = int(os.environ.get("SERVD_FUZZ_EXAMPLES", "200"))
EXAMPLE_TIMEOUT_S = 30.0
MAX_MESSAGE_BYTES = 8192  # frames up to twice this get too_large; larger ones close the socket (app.py)
HOLD = Gate()  # tests.test_fuzz:HOLD, an entrypoint the test holds shut

CONFIG = f"""
version: 1
server:
  max_message_bytes: {MAX_MESSAGE_BYTES}
  drain_timeout_s: 5
endpoints:
  echo:
    entrypoint: examples.echo:echo
    concurrency: 1
  slow:
    entrypoint: examples.faults:sleep
    concurrency: 1
    queue: {{max_per_client: 3}}
  held:
    entrypoint: tests.test_fuzz:HOLD
"""
# Random frames name endpoints at random: only "echo" exists, so a random name is never a real one.
ECHO_ONLY = CONFIG.split("  slow:")[0]

# An error answering a message that was never admitted, and the ways an admitted request may end.
REFUSALS = {"bad_request", "unknown_endpoint", "too_large", "invalid_input", "client_limit", "queue_full",
            "unavailable", "api_closed", "unauthorized"}  # fmt: skip
ENDINGS = {"cancelled", "timeout", "endpoint_failed", "unavailable"}
CODE_STATUS = {code.word: code.http_status for code in ErrorCode}


def fuzz_settings(examples: int = EXAMPLES) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=not os.environ.get("SERVD_FUZZ_RANDOM"),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


async def run_examples(
    strategy: st.SearchStrategy[Any], check: Callable[[Any], Awaitable[None]], cfg: settings
) -> None:
    """Run hypothesis over `strategy` on a worker thread; each example awaits `check` on this loop."""
    loop = asyncio.get_running_loop()

    @cfg
    @given(strategy)
    def prop(value: Any) -> None:
        asyncio.run_coroutine_threadsafe(check(value), loop).result(EXAMPLE_TIMEOUT_S)

    await loop.run_in_executor(None, prop)


# -- what a client may see: a per-id ledger that needs no model of the daemon -------------------


def id_key(value: Any) -> tuple[str, Any]:
    """1 and "1" are different ids."""
    return (type(value).__name__, value)


@dataclass
class Ledger:
    """Reads one socket's messages in order and checks the promise per id.

    "queued" opens a request (every submit here asks for progress); progress messages need an
    open request; completed ends one; an error ends an open request (with an ending code) or
    answers a submit that was never admitted (with a refusal code). Errors with id null answer a
    message whose id could not be used. Anything else is a broken promise.
    """

    open: set[tuple[str, Any]] = field(default_factory=set)
    admitted: int = 0
    ended: int = 0
    refused: int = 0
    unattributed: int = 0
    problems: list[str] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)

    def feed(self, message: dict[str, Any]) -> None:
        kind, request_id = message.get("type"), message.get("id")
        if request_id is None:
            self._unattributed(message)
            return
        key = id_key(request_id)
        if kind == "queued":
            if key in self.open:
                self.problems.append(f"{request_id!r} admitted twice at once: {message}")
            self.open.add(key)
            self.admitted += 1
        elif kind in ("estimation", "started", "partial"):
            if key not in self.open:
                self.problems.append(f"progress for a request that is not open: {message}")
        elif kind in TERMINAL:
            self._terminal(key, message)
        else:
            self.problems.append(f"unknown message type: {message}")

    def _unattributed(self, message: dict[str, Any]) -> None:
        if message.get("type") != "error" or message["error"]["code"] not in ("bad_request", "too_large"):
            self.problems.append(f"a message with id null that is not a refusal: {message}")
        self.unattributed += 1

    def _terminal(self, key: tuple[str, Any], message: dict[str, Any]) -> None:
        code = "completed" if message["type"] == "completed" else message["error"]["code"]
        if key in self.open:
            if code != "completed" and code not in ENDINGS:
                self.problems.append(f"an admitted request ended with a refusal code: {message}")
            self.open.discard(key)
            self.ended += 1
            self.outcomes[code] = self.outcomes.get(code, 0) + 1
        elif code in REFUSALS:
            self.refused += 1
        else:
            self.problems.append(f"a terminal for a request that is not open (lost or duplicated): {message}")

    @property
    def answers(self) -> int:
        """Submits and unreadable messages answered: one each."""
        return self.admitted + self.refused + self.unattributed


def check_error_shape(message: dict[str, Any]) -> None:
    assert message["type"] == "error"
    error = message["error"]
    assert error["code"] in CODE_STATUS, message
    assert isinstance(error["message"], str) and error["message"], message
    assert "Traceback" not in error["message"]


# -- strategies ------------------------------------------------------------------------------

SAFE_TEXT = st.characters(exclude_categories=("Cs",))  # lone surrogates can't be sent as UTF-8 text
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(SAFE_TEXT, max_size=30)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(SAFE_TEXT, max_size=8), inner, max_size=4),
    max_leaves=12,
)
RESERVED = {"type", "id", "endpoint", "data", "progress"}
MISSING = object()


def _is_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


VALID_IDS = (
    st.integers(-(2**63), 2**63 - 1)
    | st.sampled_from([0, -1, 2**63 - 1, -(2**63)])
    | st.text(SAFE_TEXT, min_size=0, max_size=256).filter(lambda s: not s.startswith("probe"))
    | st.just("x" * 256)
)
BAD_IDS = (
    st.just(MISSING)
    | st.none()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=2**63)
    | st.integers(max_value=-(2**63) - 1)
    | st.sampled_from([2**63, -(2**63) - 1, 10**400])
    | st.text(SAFE_TEXT, min_size=257, max_size=400)
    | st.lists(JSON_SCALARS, max_size=2)
    | st.dictionaries(st.text(max_size=3), JSON_SCALARS, max_size=2)
)


# Each field of a message, right (a value the protocol accepts) or wrong (one it must refuse).
FIELDS = {
    "type": (st.sampled_from(["submit", "submit", "submit", "cancel"]), JSON_SCALARS | st.just(MISSING)),
    "id": (VALID_IDS, BAD_IDS),
    "endpoint": (
        st.sampled_from(["echo", "echo", "echo", "no-such-endpoint"])
        | st.text(SAFE_TEXT, max_size=12)
        | st.just(MISSING),
        JSON_VALUES.filter(lambda v: v is not None and not isinstance(v, str)),
    ),
    "data": (JSON_VALUES, st.just(MISSING)),
    "progress": (
        st.booleans() | st.just(MISSING),
        JSON_SCALARS.filter(lambda v: v is not None and not isinstance(v, bool)),
    ),
}


@st.composite
def structured(draw: st.DrawFn) -> dict[str, Any]:
    """A message built field by field: none, one or several of type/id/endpoint/data/progress wrong,
    in any order, with unknown fields mixed in."""
    wrong = draw(st.sets(st.sampled_from(sorted(FIELDS)), max_size=len(FIELDS)) | st.just(set()) | st.just(set()))
    values = {key: draw(FIELDS[key][key in wrong]) for key in FIELDS}
    extra_keys = st.text(SAFE_TEXT, max_size=10).filter(lambda k: k not in RESERVED)
    extra = draw(st.dictionaries(extra_keys, JSON_VALUES, max_size=3))
    message: dict[str, Any] = {}
    for key in draw(st.permutations([*values, *extra])):
        value = values[key] if key in values else extra[key]
        if value is not MISSING:
            message[key] = value
    return message


def deep(depth: int, opener: str, closer: str, close: bool) -> str:
    return opener * depth + ("1" + closer * depth if close else "")


# Nesting deeper than any recursion limit in play (pytest and hypothesis raise it to about 3000),
# within the frame size limit; shallow nesting must be served.
TOO_DEEP = st.integers(3500, 4000)


def deep_submit(depth: int) -> str:
    return '{"type":"submit","id":"deep","endpoint":"echo","data":' + deep(depth, "[", "]", True) + "}"


def nested_submit(depth: int) -> str:
    text = json.dumps({"type": "submit", "id": depth, "endpoint": "echo", "data": "@"})
    return text.replace('"@"', deep(depth, "[", "]", True))


ODD_FRAMES = [
    "",
    " ",
    "null",
    "{}",
    "[]",
    '{"type":"submit"}',
    '{"id":1}',
    '{"type":"cancel"}',
    "NaN",
    "\ufeff{}",
    '{"type":"submit","id":1,"endpoint":"echo","data":NaN}',
    '{"type":"submit","id":1,"data":1e999,"endpoint":"echo"}',
    '{"type":"submit","id":1,"endpoint":"echo","data":1}{}',
]
FRAMES = st.one_of(
    st.builds(json.dumps, structured()),
    st.builds(json.dumps, structured()),
    st.builds(json.dumps, structured()),
    st.text(SAFE_TEXT, max_size=200).filter(lambda t: not _is_object(t)),
    JSON_VALUES.filter(lambda v: not isinstance(v, dict)).map(json.dumps),
    st.binary(max_size=64),
    st.integers(4000, 8000).map(lambda n: deep(n, "[", "", False)),
    st.integers(1000, 1600).map(lambda n: deep(n, '{"a":', "", False)),
    TOO_DEEP.map(lambda n: deep(n, "[", "]", True)),
    TOO_DEEP.map(deep_submit),
    st.integers(1, 150).map(nested_submit),
    st.integers(MAX_MESSAGE_BYTES + 1, 2 * MAX_MESSAGE_BYTES - 200).map(
        lambda n: json.dumps({"type": "submit", "id": "big", "endpoint": "echo", "data": "x" * n})
    ),
    st.sampled_from(ODD_FRAMES),
)


# -- what each frame must get ------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """Kind "error" (one error message: code, id), "nothing" (ignored by rule) or "admitted" (data echoed)."""

    kind: str
    id: Any = None
    code: str = ""
    data: Any = None
    progress: bool = True


def expect_for(frame: str | bytes, fixed_endpoint: str | None = None) -> Expect:
    """What the wire protocol (DESIGN.md §4) promises for one frame, worked out independently of servd."""
    if isinstance(frame, bytes):
        return Expect("error", None, "bad_request")
    if len(frame.encode("utf-8")) > MAX_MESSAGE_BYTES:
        return Expect("error", None, "too_large")
    try:
        message = json.loads(frame, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return Expect("error", None, "bad_request")
    if not isinstance(message, dict):
        return Expect("error", None, "bad_request")
    if _has_infinite(message):
        return Expect("error", None, "bad_request")
    request_id = message.get("id", MISSING)
    if not _valid_id(request_id):
        return Expect("error", None, "bad_request")
    kind = message.get("type")
    if kind == "cancel":
        return Expect("nothing")
    if kind != "submit" or "data" not in message:
        return Expect("error", request_id, "bad_request")
    endpoint, progress = message.get("endpoint"), message.get("progress", True)
    if (endpoint is not None and not isinstance(endpoint, str)) or not isinstance(progress, bool):
        return Expect("error", request_id, "bad_request")
    if _depth(message["data"]) > MAX_DEPTH:
        return Expect("error", request_id, "bad_request")
    if fixed_endpoint is not None:
        if endpoint not in (None, fixed_endpoint):
            return Expect("error", request_id, "bad_request")
        endpoint = fixed_endpoint
    if endpoint is None:
        return Expect("error", request_id, "bad_request")
    if endpoint != "echo":
        return Expect("error", request_id, "unknown_endpoint")
    return Expect("admitted", request_id, data=message["data"], progress=progress)


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def _has_infinite(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and item in (float("inf"), float("-inf")):
            return True
        stack.extend(item if isinstance(item, list) else item.values() if isinstance(item, dict) else ())
    return False


MAX_DEPTH = 128  # server.max_depth's default


def _depth(value: Any) -> int:
    """Levels of lists and objects in a JSON value (a scalar: 0)."""
    level, depth = [value], 0
    while True:
        level = [v for v in level if isinstance(v, (list, dict))]
        if not level:
            return depth
        depth += 1
        level = [child for v in level for child in (v.values() if isinstance(v, dict) else v)]


def _valid_id(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    return isinstance(value, str) and len(value) <= 256


def check_answer(frame: str | bytes, expect: Expect, got: list[dict[str, Any]]) -> None:
    shown = repr(frame)[:300]
    if expect.kind == "nothing":
        assert got == [], f"{shown} must be ignored, got {got}"
    elif expect.kind == "error":
        assert len(got) == 1, f"{shown} must get one error, got {got}"
        check_error_shape(got[0])
        assert got[0]["id"] == expect.id and type(got[0]["id"]) is type(expect.id), (shown, got)
        assert got[0]["error"]["code"] == expect.code, (shown, got)
    else:
        assert got, f"{shown} was not answered"
        assert all(m.get("id") == expect.id for m in got), (shown, got)
        kinds = [m["type"] for m in got]
        assert kinds[-1] == "completed" and kinds.count("completed") == 1, (shown, got)
        assert not any(k == "error" for k in kinds), (shown, got)
        if expect.progress:
            assert kinds[0] == "queued" and set(kinds[1:-1]) <= {"estimation", "started"}, (shown, kinds)
        else:
            assert kinds == ["completed"], (shown, kinds)
        assert got[-1]["data"] == expect.data, shown


# -- a client that marks where each example's answers end ---------------------------------------


class Probed:
    """A websocket whose messages are cut into per-example slices by probe requests."""

    def __init__(self, ws: WsClient, endpoint_in_submit: bool = True) -> None:
        self.ws = ws
        self.probes = 0
        self.mark = 0
        self.endpoint_in_submit = endpoint_in_submit

    async def answers_since_mark(self) -> list[dict[str, Any]]:
        """Send a probe, wait for it, return what arrived before it (its own message left out)."""
        self.probes += 1
        probe = f"probe-{self.probes}"
        await self.ws.submit(probe, "echo" if self.endpoint_in_submit else None, self.probes, progress=False)
        await self.ws.terminal(probe)
        end = next(i for i, m in enumerate(self.ws.messages) if m.get("id") == probe)
        got = self.ws.messages[self.mark : end]
        assert self.ws.messages[end]["type"] == "completed", self.ws.messages[end]
        self.mark = end + 1
        return got


async def bystander_is_unaffected(d: Running, bystander: WsClient) -> None:
    """The second client saw nothing but its own requests, and is still served."""
    assert bystander.messages == [], bystander.messages[:5]
    await bystander.submit("mine", "echo", {"still": "served"})
    done = await bystander.terminal("mine")
    assert done["type"] == "completed" and done["data"] == {"still": "served"}
    assert {m["id"] for m in bystander.messages} == {"mine"}


def request_events(d: Running) -> list[dict[str, Any]]:
    return [e for e in d.log_events() if e["event"] == "request"]


# -- websocket ---------------------------------------------------------------------------------


async def test_every_random_frame_gets_its_documented_answer_and_the_socket_stays_open(tmp_path):
    """Random text, JSON values, field-by-field malformed messages, huge ids, deep nesting, binary and
    too-large frames each get what DESIGN.md §4 promises: one error (bad_request / too_large /
    unknown_endpoint, id null unless the id was readable), nothing for a cancel of an unknown id, or a
    normal queued..completed for a valid submit. The socket stays open, a bystander is unaffected,
    every admitted request got one terminal, and the daemon logged no error."""
    async with serve(tmp_path, ECHO_ONLY) as d:
        fuzzed, bystander = await d.ws(), await d.ws()
        probed = Probed(fuzzed)
        admitted = 0

        async def check(frame: str | bytes) -> None:
            nonlocal admitted
            expect = expect_for(frame)
            await fuzzed.send(frame)
            got = await probed.answers_since_mark()
            check_answer(frame, expect, got)
            admitted += expect.kind == "admitted"
            assert not fuzzed.closed

        await run_examples(FRAMES, check, fuzz_settings())
        await bystander_is_unaffected(d, bystander)
        ends = request_events(d)
        assert len(ends) == admitted + probed.probes + 1, "one request log event per admitted request"
        assert d.daemon.endpoints["echo"].is_idle()


async def test_random_frames_on_an_endpoint_socket_get_their_documented_answer(tmp_path):
    """On /v1/endpoints/echo/ws a submit may leave out the endpoint; naming another one is bad_request;
    every other rule holds as on /v1/ws."""
    async with serve(tmp_path, ECHO_ONLY) as d:
        fuzzed, bystander = await d.ws("/v1/endpoints/echo/ws"), await d.ws()
        probed = Probed(fuzzed, endpoint_in_submit=False)

        async def check(frame: str | bytes) -> None:
            expect = expect_for(frame, fixed_endpoint="echo")
            await fuzzed.send(frame)
            check_answer(frame, expect, await probed.answers_since_mark())
            assert not fuzzed.closed

        await run_examples(FRAMES, check, fuzz_settings(max(50, EXAMPLES // 2)))
        await bystander_is_unaffected(d, bystander)


# Sequences: submits (to a fast and a slow endpoint) and cancels over a small pool of ids, so that
# duplicates in flight, cancels of unknown, queued, running and finished ids, and submits after a
# cancel all happen; plus unreadable frames. Nothing here depends on timing: whatever interleaving
# happens, the ledger must balance.
POOL = st.sampled_from([0, 1, 2, "a", "b", "c"])
ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), POOL, st.sampled_from(["echo", "slow"]), st.sampled_from([0, 0.001, 0.002])),
        st.tuples(st.just("cancel"), POOL | st.just("never-submitted")),
        st.tuples(st.just("junk"), st.sampled_from(["{", "[]", '{"type":"submit"}', '{"id": 1.5}', "null"])),
    ),
    min_size=1,
    max_size=14,
)


def action_frame(action: tuple[Any, ...]) -> str:
    if action[0] == "submit":
        _, request_id, endpoint, seconds = action
        return json.dumps({"type": "submit", "id": request_id, "endpoint": endpoint, "data": {"s": seconds}})
    if action[0] == "cancel":
        return json.dumps({"type": "cancel", "id": action[1]})
    return str(action[1])


async def test_sequences_of_submits_cancels_and_duplicates_balance_per_id(tmp_path):
    """Bursts of submits, duplicate ids in flight, cancels (of unknown, queued, running and finished
    ids), submits after cancels and junk, sent without waiting: each submit and each junk frame gets
    exactly one answer (admitted, refused, or id-null bad_request), cancels get none of their own,
    every admitted request ends exactly once, and nothing arrives late."""
    async with serve(tmp_path, CONFIG) as d:
        fuzzed, bystander = await d.ws(), await d.ws()
        probed = Probed(fuzzed)
        total = Ledger()

        async def check(actions: list[tuple[Any, ...]]) -> None:
            for action in actions:
                await fuzzed.send(action_frame(action))
            wanted = sum(1 for a in actions if a[0] != "cancel")
            start = probed.mark

            def balanced(_: Any = None) -> bool:
                ledger = Ledger()
                for message in fuzzed.messages[start:]:
                    ledger.feed(message)
                return (ledger.answers >= wanted and not ledger.open) or bool(ledger.problems)

            if not balanced():
                await fuzzed.wait_for(balanced)
            await idle(d)
            ledger = Ledger()
            for message in await probed.answers_since_mark():
                ledger.feed(message)
                total.feed(message)
            assert ledger.problems == [], (actions, ledger.problems)
            assert ledger.answers == wanted, (actions, fuzzed.messages[start:])
            assert not ledger.open and ledger.admitted == ledger.ended
            assert not fuzzed.closed

        await run_examples(ACTIONS, check, fuzz_settings(max(50, EXAMPLES // 2)))
        await bystander_is_unaffected(d, bystander)
        assert total.problems == []
        assert {"completed", "cancelled"} <= set(total.outcomes), total.outcomes
        assert len(request_events(d)) == total.admitted + probed.probes + 1


async def idle(d: Running) -> None:
    """Wait (bounded) until no call runs, not even one whose requests all ended: late output shows up now."""

    def busy() -> list[str]:
        endpoints = d.daemon.endpoints.values()
        return [e.name for e in endpoints if not e.is_idle() or e.calls_running()]

    await eventually(busy, "every endpoint to go idle", until=lambda names: not names, interval=0.002)


async def test_a_malformed_message_reusing_an_in_flight_id_is_refused_with_id_null(tmp_path):
    """A malformed message (no data, unknown type) that carries the id of a request in flight is
    refused with id null, as a duplicate submit is: an error with that id would read as the running
    request's terminal, and its real result would then look like a second one (DESIGN.md §4)."""
    async with serve(tmp_path, CONFIG) as d:
        ws = await d.ws()
        with HOLD.shut():
            await ws.submit("busy", "held", "busy")
            await ws.wait_for(lambda m: m.get("id") == "busy" and m["type"] == "started")
            await ws.send({"type": "submit", "id": "busy", "endpoint": "held"})  # no data
            await ws.send({"type": "resubmit", "id": "busy"})
            await ws.send({"type": "submit", "id": "probe", "endpoint": "echo", "data": 1})
            await ws.terminal("probe")
            refusals = [m for m in ws.messages if m["type"] == "error"]
        done = await ws.wait_for(lambda m: m.get("id") == "busy" and m["type"] == "completed")
        assert len(refusals) == 2 and all(r["error"]["code"] == "bad_request" for r in refusals), refusals
        assert [r["id"] for r in refusals] == [None, None], "a refusal must not carry the id of a request in flight"
        assert done["data"] == "busy"
        assert [m["type"] for m in ws.of("busy")] == ["queued", "started", "completed"]


# -- HTTP --------------------------------------------------------------------------------------

HEADER_NAME = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz-"), min_size=1, max_size=12).map(lambda s: "X-" + s)
HEADER_VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60).map(str.strip)
CONTENT_TYPES = st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded",
                                 "multipart/form-data; boundary=x", "application/json; charset=latin-1", "*/*",
                                 "garbage"])  # fmt: skip
ACCEPTS = st.sampled_from(["application/json", "*/*", "text/event-stream", "text/html, text/event-stream;q=0.9",
                           "garbage", ""])  # fmt: skip


TOO_LARGE_BODIES = st.integers(MAX_MESSAGE_BYTES + 1, 2 * MAX_MESSAGE_BYTES - 20).map(
    lambda n: b'{"data":"' + b"x" * n + b'"}'
)


@st.composite
def http_requests(draw: st.DrawFn) -> tuple[str, dict[str, str], bytes]:
    method = draw(st.sampled_from(["POST"] * 8 + ["GET", "PUT", "PATCH", "DELETE", "OPTIONS"]))
    headers = draw(st.dictionaries(HEADER_NAME, HEADER_VALUE, max_size=4))
    if draw(st.booleans()):
        headers["Content-Type"] = draw(CONTENT_TYPES)
    if draw(st.booleans()):
        headers["Accept"] = draw(ACCEPTS)
    if draw(st.booleans()):
        headers["Authorization"] = draw(st.sampled_from(["Bearer ", "Bearer x", "Basic Zm9vOmJhcg==", "garbage"]))
    if draw(st.booleans()):
        headers["Origin"] = draw(st.sampled_from(["https://evil.example", "null", "http://127.0.0.1"]))
    body = draw(
        st.one_of(
            st.binary(max_size=80),
            st.text(SAFE_TEXT, max_size=80).map(str.encode),
            JSON_VALUES.map(lambda v: json.dumps(v).encode()),
            st.builds(lambda data, extra: json.dumps({**extra, "data": data}).encode(), JSON_VALUES,
                      st.dictionaries(st.text(max_size=5).filter(lambda k: k != "data"), JSON_VALUES, max_size=3)),
            st.builds(lambda data: json.dumps({"data": data}).encode(), JSON_VALUES),
            TOO_DEEP.map(lambda n: ('{"data":' + deep(n, "[", "]", True) + "}").encode()),
            TOO_LARGE_BODIES,
            st.sampled_from([b"", b"{}", b'{"data":NaN}', b'{"data":1e999}', b'{"data":1}{"data":2}', b"\xff\xfe{}",
                             b'{"data":"\\ud800"}', b'\xef\xbb\xbf{"data":1}']),
        )
    )  # fmt: skip
    return method, headers, body


def expect_http(method: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """(status, data) that /v1/endpoints/echo promises; data is MISSING unless a POST completes."""
    if "Origin" in (headers or {}):
        return 403, MISSING  # every Origin drawn is another site's; allowed_origins defaults to same-origin only
    if method == "GET":
        return 200, MISSING
    if method == "OPTIONS":
        return 204, MISSING  # the route's methods in Allow (or a CORS preflight's answer)
    if method != "POST":
        return 405, MISSING
    if len(body) > MAX_MESSAGE_BYTES:
        return 413, MISSING
    try:
        value = json.loads(body.decode("utf-8") or "null", parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return 400, MISSING
    if not isinstance(value, dict) or "data" not in value or _has_infinite(value):
        return 400, MISSING
    if _depth(value["data"]) > MAX_DEPTH:
        return 400, MISSING
    return 200, value["data"]


def sse_events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


async def test_random_http_bodies_and_headers_get_documented_statuses_with_json_errors(tmp_path):
    """Random bodies (bytes, text, JSON, deep nesting, too large, NaN, BOMs) and headers (content
    types, Accept with and without event-stream, junk auth, origins) to /v1/endpoints/echo: each reply
    is 200 with the data echoed (as JSON or as an SSE stream ending in completed), or a documented
    error status with a JSON body naming code and message; never a 500; the daemon serves on."""
    async with serve(tmp_path, ECHO_ONLY) as d:
        bystander = await d.ws()

        async def check(request: tuple[str, dict[str, str], bytes]) -> None:
            method, headers, body = request
            status, data = expect_http(method, body, headers)
            reply = await d.http(method, "/v1/endpoints/echo", headers=headers, raw=body)
            shown = (method, headers, body[:200], reply.status, reply.body[:300])
            assert reply.status == status, shown
            if status == 200 and method == "POST" and "text/event-stream" in headers.get("Accept", ""):
                assert reply.headers["Content-Type"] == "text/event-stream", shown
                events = sse_events(reply.body)
                assert [kind for kind, _ in events].count("completed") == 1, shown
                assert events[-1][0] == "completed" and events[-1][1]["data"] == data, shown
                assert "error" not in [kind for kind, _ in events], shown
                return
            if status == 204:
                assert reply.body == b"", shown
                return
            answer = json.loads(reply.body)
            if status == 200:
                if method == "POST":
                    assert answer["data"] == data and set(answer["timing"]) == {"queue_s", "run_s", "batch_size"}
                return
            assert reply.headers["Content-Type"].startswith("application/json"), shown
            code = answer["error"]["code"]
            assert isinstance(answer["error"]["message"], str) and answer["error"]["message"], shown
            assert code == {413: "too_large", 405: "method_not_allowed", 403: "forbidden_origin"}.get(
                status, "bad_request"
            ), shown
            assert b"Traceback" not in reply.body

        await run_examples(http_requests(), check, fuzz_settings())
        await bystander_is_unaffected(d, bystander)
        assert (await d.post("echo", {"after": "fuzz"})).json()["data"] == {"after": "fuzz"}
