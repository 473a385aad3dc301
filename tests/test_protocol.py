"""servd.protocols.ws_messages: every malformed client message is a ProtocolError that says what is wrong,
carrying the request's id whenever it could be read; every server message is valid JSON.
"""

from __future__ import annotations

import json

import pytest

from servd.core.events import STARTED, Completed, Estimation, Failed, Partial, Queued
from servd.errors import ErrorCode
from servd.protocols import ws_messages as protocol
from servd.protocols.ws_messages import MAX_ID_CHARS, Cancel, ProtocolError, Submit, parse


def error_of(text: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        parse(text)
    return caught.value


# -- well-formed messages ------------------------------------------------------------------


def test_a_submit_parses_with_its_fields():
    """type, id, endpoint, data and progress all come through."""
    message = '{"type": "submit", "id": "c1", "endpoint": "classify", "data": [1, 2], "progress": false}'
    assert parse(message) == Submit("c1", "classify", [1, 2], False)


def test_a_submit_defaults_to_progress_and_may_leave_out_the_endpoint():
    """progress defaults to true; endpoint may be absent (the per-endpoint websocket supplies it)."""
    assert parse('{"type": "submit", "id": 7, "data": null}') == Submit(7, None, None, True)


def test_a_cancel_parses():
    """A cancel needs only its id."""
    assert parse('{"type": "cancel", "id": "c1"}') == Cancel("c1")


def test_unknown_fields_are_ignored():
    """Newer clients may send fields this server doesn't know."""
    assert parse('{"type": "cancel", "id": 3, "reason": "bored"}') == Cancel(3)


def test_bytes_of_valid_json_are_still_refused():
    """Binary websocket frames are refused whatever they contain."""
    assert "binary" in error_of(b'{"type": "cancel", "id": 1}').message


def test_the_largest_ids_are_accepted():
    """The 64-bit signed range and MAX_ID_CHARS characters are allowed."""
    assert parse(f'{{"type": "cancel", "id": {2**63 - 1}}}') == Cancel(2**63 - 1)
    assert parse(f'{{"type": "cancel", "id": {-(2**63)}}}') == Cancel(-(2**63))
    assert parse(json.dumps({"type": "cancel", "id": "x" * MAX_ID_CHARS})) == Cancel("x" * MAX_ID_CHARS)


# -- malformed messages --------------------------------------------------------------------

# case: (message, words the error must contain, the id it must carry)
MALFORMED = {
    "not json": ("{type: submit}", ["not valid JSON"], None),
    "truncated json": ('{"type": "submit", "id": 1', ["not valid JSON"], None),
    "empty": ("", ["not valid JSON"], None),
    "nan data": ('{"type": "submit", "id": 1, "data": NaN}', ["not valid JSON", "NaN"], None),
    "infinity data": ('{"type": "submit", "id": 1, "data": Infinity}', ["not valid JSON", "Infinity"], None),
    "array": ('[{"type": "submit"}]', ["JSON object", "list"], None),
    "string": ('"submit"', ["JSON object", "str"], None),
    "null": ("null", ["JSON object", "NoneType"], None),
    "missing type": ('{"id": "a", "data": 1}', ["'type'", "submit", "cancel", "None"], "a"),
    "unknown type": ('{"type": "subscribe", "id": "a"}', ["'type'", "'subscribe'"], "a"),
    "type not a string": ('{"type": 1, "id": 5}', ["'type'", "1"], 5),
    "missing id": ('{"type": "submit", "data": 1}', ["no 'id'"], None),
    "null id": ('{"type": "submit", "id": null, "data": 1}', ["'id'", "NoneType"], None),
    "bool id": ('{"type": "submit", "id": true, "data": 1}', ["'id'", "bool"], None),
    "float id": ('{"type": "submit", "id": 1.5, "data": 1}', ["'id'", "float"], None),
    "integral float id": ('{"type": "submit", "id": 1.0, "data": 1}', ["'id'", "float"], None),
    "list id": ('{"type": "submit", "id": [1], "data": 1}', ["'id'", "list"], None),
    "too long id": (json.dumps({"type": "submit", "id": "x" * (MAX_ID_CHARS + 1), "data": 1}), ["257", "256"], None),
    "id above int64": (f'{{"type": "submit", "id": {2**63}, "data": 1}}', ["'id'", "64-bit"], None),
    "id below int64": (f'{{"type": "submit", "id": {-(2**63) - 1}, "data": 1}}', ["'id'", "64-bit"], None),
    "missing data": ('{"type": "submit", "id": "a", "endpoint": "echo"}', ["no 'data'", "null"], "a"),
    "endpoint not a string": ('{"type": "submit", "id": "a", "endpoint": 3, "data": 1}', ["'endpoint'", "string"], "a"),
    "progress not a bool": ('{"type": "submit", "id": 9, "data": 1, "progress": "no"}', ["'progress'"], 9),
    "progress as a number": ('{"type": "submit", "id": 9, "data": 1, "progress": 0}', ["'progress'"], 9),
    "binary": (b'{"type": "submit", "id": 1, "data": 1}', ["binary"], None),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_message_names_its_problem_and_carries_its_id(case):
    """Each malformed message raises ProtocolError saying what is wrong, with the id if readable."""
    text, words, request_id = MALFORMED[case]
    error = error_of(text)
    for word in words:
        assert word in error.message, (word, error.message)
    assert error.id == request_id
    assert str(error) == error.message


def test_the_id_of_a_bad_cancel_is_kept():
    """A cancel with a bad type keeps its id, so the error reply can name the request."""
    assert error_of('{"type": "cancle", "id": "c9"}').id == "c9"


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_nesting_100000_levels_deep_is_a_protocol_error(opener):
    """A message nested 100 000 levels is refused as invalid JSON, not a crash of the connection."""
    error = error_of(opener * 100_000)
    assert "not valid JSON" in error.message
    assert error.id is None


def test_deep_nesting_inside_data_is_a_protocol_error():
    """A well-formed envelope whose data nests 100 000 levels is refused the same way."""
    text = '{"type": "submit", "id": 1, "data": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert "not valid JSON" in error_of(text).message


# -- server messages -----------------------------------------------------------------------

ODD_IDS = ["plain", 'quote " and \\ backslash', "unicode ☃ \u2028", "</script>", 0, -5, 2**63 - 1]


@pytest.mark.parametrize("request_id", ODD_IDS)
def test_every_server_message_is_valid_json_with_its_id(request_id):
    """Whatever the id, each built message parses as JSON with the right type and the same id."""
    timing = protocol.timing(0.25, 1.5, 4)
    built = {
        "queued": protocol.progress(request_id, Queued(3, 10, 1.23456)),
        "estimation": protocol.progress(request_id, Estimation(2, 9, None)),
        "started": protocol.progress(request_id, STARTED),
        "partial": protocol.progress(request_id, Partial('{"text": "one"}')),
        "completed": protocol.completed(request_id, "[1, 2]", timing),
        "error": protocol.error(request_id, ErrorCode.QUEUE_FULL, "queue.max_size=256 reached"),
    }
    for kind, text in built.items():
        message = json.loads(text)
        assert message["type"] == kind
        assert message["id"] == request_id


def test_queued_and_estimation_carry_rank_queue_size_and_eta():
    """queued/estimation: rank, queue_size and eta_s in seconds (null before any timing)."""
    assert json.loads(protocol.progress("a", Queued(3, 10, 1.23456))) == {
        "type": "queued",
        "id": "a",
        "rank": 3,
        "queue_size": 10,
        "eta_s": 1.235,
    }
    assert json.loads(protocol.progress("a", Estimation(0, 1, None))) == {
        "type": "estimation",
        "id": "a",
        "rank": 0,
        "queue_size": 1,
        "eta_s": None,
    }


def test_started_and_partial_carry_their_fields():
    """started has only type and id; partial carries the data as given."""
    assert json.loads(protocol.progress(1, STARTED)) == {"type": "started", "id": 1}
    assert json.loads(protocol.progress(1, Partial('{"text": "one two"}'))) == {
        "type": "partial",
        "id": 1,
        "data": {"text": "one two"},
    }


def test_completed_carries_data_and_timing():
    """completed: the data, and timing with queue_s, run_s and batch_size."""
    message = json.loads(protocol.completed("a", '{"label": 7}', protocol.timing(0.0123456789, 2.5, 8)))
    assert message == {
        "type": "completed",
        "id": "a",
        "data": {"label": 7},
        "timing": {"queue_s": 0.012346, "run_s": 2.5, "batch_size": 8},
    }


def test_an_error_carries_its_code_word_and_message():
    """error: {"code": the wire word, "message": the text}, escaped as JSON needs."""
    message = json.loads(protocol.error(None, ErrorCode.BAD_REQUEST, 'bad "quote"\nnext line'))
    assert message == {
        "type": "error",
        "id": None,
        "error": {"code": "bad_request", "message": 'bad "quote"\nnext line'},
    }


def test_terminal_builds_completed_or_error():
    """The one terminal message of a request follows its outcome."""
    done = json.loads(protocol.terminal("a", Completed('"ok"', queue_s=0.5, run_s=0.25, batch_size=2)))
    failed = json.loads(protocol.terminal("b", Failed(ErrorCode.TIMEOUT, "queue.timeout_s=1 passed")))
    assert done == {
        "type": "completed",
        "id": "a",
        "data": "ok",
        "timing": {"queue_s": 0.5, "run_s": 0.25, "batch_size": 2},
    }
    assert failed == {
        "type": "error",
        "id": "b",
        "error": {"code": "timeout", "message": "queue.timeout_s=1 passed"},
    }


def test_every_error_code_builds_a_message_with_its_word():
    """Each ErrorCode's word is what the client receives as error.code."""
    for code in ErrorCode:
        assert json.loads(protocol.error(1, code, "m"))["error"]["code"] == code.word


def test_a_number_too_large_for_a_float_is_a_bad_request_not_infinity():
    """1e999 would decode to inf, reach the model and make its result unsendable: refuse it up front."""
    with pytest.raises(ProtocolError, match="too large for a float"):
        parse('{"type":"submit","id":1,"data":[1.5, 1e999]}')
    assert parse('{"type":"submit","id":1,"data":1e300}').data == 1e300


@pytest.mark.parametrize(
    "data",
    [
        [2**64, -(2**70), 10**308],  # past 64 bits: exact Python ints, never rounded to floats
        [0.1, -1e-300, 1.7976931348623157e308, 5e-324],
        {"nested": [[1, 2.5, "é ✓"], {"k": None, "b": True}]},
    ],
    ids=["big-integers", "float-extremes", "nested"],
)
def test_submitted_data_decodes_exactly_as_json_defines_it(data):
    """Whatever decoder runs underneath, data arrives as the json module would decode it."""
    text = json.dumps({"type": "submit", "id": 1, "data": data})
    decoded = parse(text).data
    assert decoded == json.loads(text)["data"]
    assert json.dumps(decoded) == json.dumps(data)  # types too: an int stays an int


@pytest.mark.parametrize(
    "value",
    [
        [0.1, -0.0, 1e300, 5e-324, 16, True, "é ✓ </script>"],
        {"a": None, "b": [None, 1]},  # null is kept, not confused with NaN
        {1: "int keys become strings", 2**70: "as json does"},
        [2**64, -(2**63) - 1],
    ],
    ids=["plain", "nulls", "int-keys", "big-integers"],
)
def test_results_encode_to_what_the_json_module_would_decode_the_same(value):
    """protocol.dumps (orjson underneath) yields JSON meaning exactly what json.dumps yields."""
    assert json.loads(protocol.dumps(value)) == json.loads(json.dumps(value))


@pytest.mark.parametrize(
    "value", [float("nan"), [1.0, float("inf")], {"x": {1, 2}}, object()], ids=["nan", "inf", "set", "object"]
)
def test_results_json_cannot_hold_are_refused(value):
    """NaN and infinity are refused (orjson alone would write null), as are sets and objects."""
    with pytest.raises((TypeError, ValueError)):
        protocol.dumps(value)
