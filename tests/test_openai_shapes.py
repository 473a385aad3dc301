"""OpenAI's chat shapes as plain functions (servd/protocols/openai_shapes.py, issue 14): what a chat request
becomes for the entrypoint, how its answer is read, and the finish reason servd reports."""

from __future__ import annotations

import pytest

from servd.errors import ErrorCode
from servd.protocols.openai_shapes import Answer, ChatError, NotAChatAnswer, Piece, error, parse_chat, piece

MESSAGES = [{"role": "user", "content": "hi"}]


def test_the_entrypoint_gets_the_body_less_servds_fields_with_max_tokens_and_stop_normalised():
    chat = parse_chat(
        {"model": "m", "messages": MESSAGES, "n": 1, "stream": True, "stream_options": {"include_usage": True},
         "max_completion_tokens": 9, "max_tokens": 99, "stop": "\n", "top_p": 0.5,
         "servd": {"priority": 2, "deadline_s": 1.5, "queue_updates": True}}
    )  # fmt: skip
    assert chat.data == {"messages": MESSAGES, "max_tokens": 9, "stop": ["\n"], "top_p": 0.5}
    assert (chat.model, chat.stream, chat.include_usage, chat.queue_updates) == ("m", True, True, True)
    assert (chat.priority, chat.deadline_s) == (2, 1.5)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ({"messages": MESSAGES}, "model"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": "m", "messages": [{"content": "no role"}]}, "messages[0].role"),
        ({"model": "m", "messages": ["hi"]}, "messages[0]"),
        ({"model": "m", "messages": MESSAGES, "n": 2}, "n"),
        ({"model": "m", "messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"model": "m", "messages": MESSAGES, "stop": [""]}, "stop"),
        ({"model": "m", "messages": MESSAGES, "temperature": "hot"}, "temperature"),
        ({"model": "m", "messages": MESSAGES, "stream": "yes"}, "stream"),
        ({"model": "m", "messages": MESSAGES, "stream_options": {"include_usage": 1}}, "stream_options"),
        ({"model": "m", "messages": MESSAGES, "servd": {"priority": -1}}, "servd"),
    ],
)
def test_a_request_servd_cant_take_is_a_chat_error_naming_the_field(body, param):
    with pytest.raises(ChatError) as refused:
        parse_chat(body)
    assert refused.value.param == param


def refused(**fields: object) -> ChatError:
    with pytest.raises(ChatError) as caught:
        parse_chat({"model": "m", "messages": MESSAGES, **fields})
    return caught.value


def test_a_role_openai_does_not_know_is_refused_naming_the_roles_it_does():
    """role "wizard" is refused as OpenAI refuses it: "Invalid value", the supported roles, and
    the message's path as param (issue 24: it was passed to the entrypoint)."""
    error = refused(messages=[{"role": "user", "content": "hi"}, {"role": "wizard", "content": "hi"}])
    assert error.param == "messages[1].role"
    assert str(error).startswith("Invalid value: 'wizard'. Supported values are: 'system', 'assistant'")


@pytest.mark.parametrize("role", ["system", "developer", "user", "tool", "assistant"])
def test_a_message_without_content_is_refused_where_its_role_needs_content(role):
    """A message without `content` is "Missing required parameter" for every role that needs it;
    an assistant's needs none when it carries tool_calls."""
    message = {"role": role, "tool_call_id": "call_1"} if role == "tool" else {"role": role}
    error = refused(messages=[message])
    assert (error.param, str(error)) == ("messages[0].content", "Missing required parameter: 'messages[0].content'.")
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assert parse_chat({"model": "m", "messages": [{"role": "assistant", "tool_calls": calls}]}).data["messages"]


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "user", "content": 3}, "messages[0].content"),
        ({"role": "user", "content": None}, "messages[0].content"),
        ({"role": "user", "content": []}, "messages[0].content"),
        ({"role": "user", "content": [{"text": "no type"}]}, "messages[0].content"),
        ({"role": "tool", "content": "42"}, "messages[0].tool_call_id"),
        ({"role": "user", "content": "hi", "name": 7}, "messages[0].name"),
    ],
)
def test_content_tool_call_id_and_name_must_have_openais_types(message, param):
    """Content that is a number, null (for a user), an empty list or parts without a type, a tool
    message without tool_call_id, a name that is not text: refused, naming the message's field."""
    assert refused(messages=[message]).param == param


def test_content_may_be_text_parts_and_an_assistants_may_be_null():
    """What OpenAI accepts is accepted: content as a list of parts, an assistant's null content
    beside tool_calls or function_call; the entrypoint gets the messages as sent."""
    parts = [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "data:,"}}]
    messages = [{"role": "user", "content": parts}, {"role": "assistant", "content": None, "tool_calls": []},
                {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": ""}}]  # fmt: skip
    assert parse_chat({"model": "m", "messages": messages}).data["messages"] == messages


@pytest.mark.parametrize(
    ("fields", "param", "words"),
    [
        ({"top_p": 3}, "top_p", "decimal above maximum value. Expected a value <= 1, but got 3 instead."),
        ({"top_p": -0.1}, "top_p", "decimal below minimum value. Expected a value >= 0"),
        ({"top_p": "all"}, "top_p", "expected a number, but got a string instead"),
        ({"temperature": 2.5}, "temperature", "Expected a value <= 2"),
        ({"presence_penalty": -3}, "presence_penalty", "Expected a value >= -2"),
        ({"frequency_penalty": 2.01}, "frequency_penalty", "Expected a value <= 2"),
        ({"stop": [f"s{i}" for i in range(10)]}, "stop", "array too long. Expected an array with maximum length 4, "
         "but got an array with length 10 instead."),
        ({"logprobs": True}, "logprobs", "'logprobs' is not supported"),
        ({"top_logprobs": 2}, "top_logprobs", "'top_logprobs' is not supported"),
    ],
)  # fmt: skip
def test_values_openai_refuses_are_refused_in_its_words(fields, param, words):
    """top_p above 1, ten stop strings, penalties outside [-2, 2]: OpenAI's message and param;
    logprobs: true is refused rather than silently ignored (servd has no token log probabilities)."""
    error = refused(**fields)
    assert error.param == param and words in str(error), str(error)


def test_the_bounds_themselves_and_logprobs_false_are_accepted():
    """top_p 1, temperature 0, a penalty of -2, four stops and logprobs: false are all fine."""
    chat = parse_chat({"model": "m", "messages": MESSAGES, "top_p": 1, "temperature": 0, "presence_penalty": -2,
                       "stop": ["a", "b", "c", "d"], "logprobs": False, "top_logprobs": None})  # fmt: skip
    assert chat.data["stop"] == ["a", "b", "c", "d"] and chat.data["top_p"] == 1 and chat.data["logprobs"] is False


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a piece", Piece("a piece")),
        (None, Piece("")),
        ({"text": "x", "finish_reason": "length"}, Piece("x", None, "length")),
        (
            {"usage": {"prompt_tokens": 2, "completion_tokens": 3}},
            Piece("", {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}),
        ),
    ],
)
def test_a_returned_or_yielded_value_is_read_as_a_piece(value, expected):
    assert piece(value) == expected


@pytest.mark.parametrize(
    "value",
    [42, ["a"], {"content": "x"}, {"text": 1}, {"finish_reason": "tired"}, {"usage": {"prompt_tokens": 1}}],
)
def test_anything_else_is_not_a_chat_answer(value):
    with pytest.raises(NotAChatAnswer, match=r"must be|a chat entrypoint returns"):
        piece(value)


def test_the_answer_joins_its_pieces_and_keeps_the_last_usage_and_reason():
    answer = Answer()
    for value in ["Hello", None, " world", {"usage": {"prompt_tokens": 1, "completion_tokens": 2}}]:
        answer.add(piece(value))
    assert (answer.text, answer.pieces, answer.usage) == (
        "Hello world",
        4,
        {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    )


@pytest.mark.parametrize(
    ("values", "max_tokens", "reason"),
    [
        (["text"], 5, "stop"),  # nothing reported: stop
        ([{"usage": {"prompt_tokens": 1, "completion_tokens": 5}}], 5, "length"),  # reached max_tokens
        ([{"usage": {"prompt_tokens": 1, "completion_tokens": 4}}], 5, "stop"),
        ([{"usage": {"prompt_tokens": 1, "completion_tokens": 5}}], None, "stop"),  # no cap asked for
        ([{"finish_reason": "length"}], None, "length"),  # reported: as reported
        ([{"usage": {"prompt_tokens": 1, "completion_tokens": 5}, "finish_reason": "stop"}], 5, "stop"),
    ],
)
def test_finish_reason_is_reported_or_length_when_max_tokens_was_reached(values, max_tokens, reason):
    answer = Answer()
    for value in values:
        answer.add(piece(value))
    assert answer.finish_reason(max_tokens) == reason


def test_errors_carry_servds_code_and_openais_type_by_status():
    assert error(ErrorCode.QUEUE_FULL, "full") == {
        "error": {"message": "full", "type": "server_error", "param": None, "code": "queue_full"}
    }
    assert error(ErrorCode.BAD_REQUEST, "n", "n")["error"]["type"] == "invalid_request_error"
    assert error(ErrorCode.CLIENT_LIMIT, "x")["error"]["type"] == "rate_limit_error"
    assert error(ErrorCode.UNAUTHORIZED, "x")["error"]["type"] == "authentication_error"
