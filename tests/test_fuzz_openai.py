"""The OpenAI chat-request parser as a pure function, fuzzed (issues 24, 25): a ChatRequest or a ChatError.

`openai_shapes.parse_chat` reads whatever a client posts to /v1/chat/completions; the handler
turns a ChatError into a 400 in OpenAI's shape, naming the field (`param`), and anything else
into a 500. So for every body it must return a ChatRequest or raise ChatError: bodies are built
valid, then broken field by field (roles, contents, sampling numbers, stop lists, logprobs, the
servd field, wrong types everywhere), and arbitrary JSON is tried too. What it accepts must be
what OpenAI accepts for the fields servd checks. Bounded and derandomized like test_fuzz.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from servd.protocols import openai_shapes as shapes
from tests.test_fuzz import EXAMPLES, JSON_SCALARS, JSON_VALUES, fuzz_settings

NUMBERS = st.integers(-5, 5) | st.floats(-5, 5, allow_nan=False) | st.sampled_from([10**400, 2**70, -(2**70), 1e308])
ROLES = st.sampled_from([*shapes.ROLES, "wizard", "", "USER"]) | JSON_SCALARS
CONTENT = (
    st.text(max_size=8)
    | st.none()
    | st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": st.text(max_size=4)}))
    | JSON_VALUES
)


def sometimes(draw: st.DrawFn, good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
    """Mostly a value OpenAI takes, one time in five one it may not: most bodies get past the
    first field, so the later checks are reached too."""
    return draw(bad if rarely(draw, 5) else good)


def rarely(draw: st.DrawFn, one_in: int) -> bool:
    """True about one time in `one_in` (st.integers would shrink toward, and so favour, 0)."""
    return bool(draw(st.sampled_from([False] * (one_in - 1) + [True])))


@st.composite
def messages(draw: st.DrawFn) -> Any:
    out: list[Any] = []
    for _ in range(0 if rarely(draw, 10) else draw(st.integers(1, 3))):
        role = sometimes(draw, st.sampled_from(["user", "assistant", "system"]), ROLES)
        message: dict[str, Any] = {"role": role}
        if not rarely(draw, 6):
            message["content"] = sometimes(draw, st.text(max_size=8), CONTENT)
        if role == "tool" and not rarely(draw, 4):
            message["tool_call_id"] = sometimes(draw, st.just("call_1"), JSON_SCALARS)
        for key, values in (("name", JSON_SCALARS), ("tool_calls", JSON_VALUES), ("function_call", JSON_VALUES)):
            if rarely(draw, 6):
                message[key] = draw(values)
        out.append(draw(JSON_VALUES) if rarely(draw, 20) else message)
    return draw(JSON_VALUES) if rarely(draw, 20) else out


FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(["m", ""]) | JSON_SCALARS,  # (only sometimes drawn: "m" stays otherwise)
    "n": st.sampled_from([1, 2, None]) | JSON_SCALARS,
    "stream": st.booleans() | JSON_SCALARS,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": JSON_SCALARS}) | JSON_VALUES,
    "servd": st.fixed_dictionaries(
        {}, optional={k: JSON_SCALARS | NUMBERS for k in ("priority", "deadline_s", "queue_updates")}
    )
    | JSON_VALUES,
    "max_tokens": NUMBERS | JSON_SCALARS,
    "max_completion_tokens": NUMBERS | JSON_SCALARS,
    "stop": st.lists(st.text(max_size=3), max_size=8) | st.text(max_size=3) | JSON_VALUES,
    "temperature": NUMBERS | JSON_SCALARS,
    "top_p": NUMBERS | JSON_SCALARS,
    "presence_penalty": NUMBERS | JSON_SCALARS,
    "frequency_penalty": NUMBERS | JSON_SCALARS,
    "logprobs": st.booleans() | JSON_SCALARS,
    "top_logprobs": st.integers(0, 20) | JSON_SCALARS,
    "user": JSON_SCALARS,
}


@st.composite
def bodies(draw: st.DrawFn) -> Any:
    """A chat body: model and messages, then any of the fields servd reads, each any value."""
    body: dict[str, Any] = {"model": "m", "messages": draw(messages())}
    for key in draw(st.sets(st.sampled_from(sorted(FIELDS)), max_size=5)):
        body[key] = draw(FIELDS[key])
    return draw(JSON_VALUES) if rarely(draw, 20) else body


def in_range(body: dict[str, Any], name: str, low: float, high: float) -> bool:
    value = body.get(name)
    return value is None or (not isinstance(value, bool) and isinstance(value, (int, float)) and low <= value <= high)


@fuzz_settings(max(200, EXAMPLES))
@given(bodies())
def test_any_chat_body_is_a_chat_request_or_a_chat_error(body):
    """Every body parses or is refused with ChatError (a 400 in OpenAI's shape, its param a field
    of the body); what parses has known roles, bounded sampling numbers, at most 4 stops and no
    logprobs, as OpenAI's own checks require."""
    try:
        chat = shapes.parse_chat(body)
    except shapes.ChatError as exc:
        assert str(exc) and "Traceback" not in str(exc)
        field = None if exc.param is None else exc.param.split("[")[0].split(".")[0]
        assert field is None or field in ("model", "messages") or field in body, exc.param  # a field it named
        return
    assert isinstance(chat, shapes.ChatRequest)
    assert all(m["role"] in shapes.ROLES for m in body["messages"])
    assert all(in_range(body, name, low, high) for name, (low, high) in shapes.RANGES.items())
    assert len(chat.data["stop"]) <= shapes.MAX_STOP
    assert body.get("logprobs") in (None, False) and body.get("top_logprobs") is None
