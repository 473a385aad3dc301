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
        ({"model": "m", "messages": [{"content": "no role"}]}, "messages"),
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
