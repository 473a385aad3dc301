"""Wire messages: parse what clients send, build what the server sends (JSON text).

Pure functions; no I/O. Server messages are built as text so that a result encoded once
(on the worker thread) is never decoded and encoded again on the loop.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import orjson

from servd.core.request import Completed, Failed
from servd.errors import ErrorCode

MAX_ID_CHARS = 256
MAX_INT_ID = 2**63
MAX_DEPTH = 128  # server.max_depth's default (schemas/servd.schema.json)


@dataclass(slots=True, frozen=True)
class Submit:
    id: str | int
    endpoint: str | None
    data: Any
    progress: bool
    size: int = field(default=0, compare=False)  # characters of the message: what checking `data` may cost
    priority: int = 0  # 0 = the endpoint's default level
    deadline_s: float | None = None


@dataclass(slots=True, frozen=True)
class Cancel:
    id: str | int


class ProtocolError(Exception):
    """A client message we can't act on; `id` is the request's id when we could read it."""

    def __init__(self, message: str, id: str | int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.id = id


def parse(text: str | bytes, max_depth: int = MAX_DEPTH) -> Submit | Cancel:
    """One client message -> Submit or Cancel; raises ProtocolError naming what is wrong.

    Unknown fields are ignored, so newer clients can talk to older servers. A submit's data may
    be nested at most `max_depth` levels (server.max_depth; see depth_problem).
    """
    if isinstance(text, bytes):
        raise ProtocolError("binary frames are not supported; send JSON text")
    try:
        message = loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"message is not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"message must be a JSON object, got {type(message).__name__}")
    kind = message.get("type")
    request_id = _parse_id(message)
    if kind == "submit":
        return _submit(message, request_id, text, max_depth)
    if kind == "cancel":
        return Cancel(request_id)
    raise ProtocolError(f"'type' must be 'submit' or 'cancel', got {kind!r}", request_id)


def loads(text: str | bytes) -> Any:
    """Strict JSON: no NaN/Infinity, and no number too large for a float (1e999 would become inf).

    Either would reach the entrypoint and make its result unsendable, blaming the model for the
    client's input. orjson decodes (it is strict already, and 6-8x faster than the json module
    on a list of numbers, the common model input); two cases go to the json module instead:
    integers longer than 18 digits, which orjson would turn into floats while Python keeps them
    exact, and anything orjson refuses, so the error message (and what is accepted, such as a
    lone surrogate) stays the json module's.
    """
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if _LONG_DIGIT_RUN not in raw.translate(_DIGITS_AS_ZERO):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return _STRICT_DECODER.decode(text)


def dumps(value: Any) -> str:
    """JSON text of an entrypoint's result; TypeError/ValueError for what JSON can't hold (NaN too).

    orjson encodes (about 10x faster than the json module on a list of floats); the json module
    takes over where orjson would differ from it: orjson writes NaN and infinity as null (any
    "null" in its output sends the value the slow way, so NaN is refused as before), and it
    refuses integers past 64 bits, non-string keys and str/int subclasses, which json encodes;
    and it writes non-ASCII text raw where servd has always sent ASCII escapes (some clients split
    lines on U+2028), so such output is encoded by json too.
    orjson also encodes a few types the json module refuses (UUID, Enum); dataclasses and
    datetimes are passed through so they are refused as before.
    """
    try:
        raw: bytes | None = orjson.dumps(value, option=_ORJSON_STRICT)
    except TypeError:
        raw = None
    if raw is not None and raw.isascii() and b"null" not in raw:
        return raw.decode("ascii")
    return _ENCODER.encode(value)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"number {literal[:40]} is too large for a float")
    return value


_ORJSON_STRICT = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
# servd's own bodies (errors, status, events): compact like every answer, json's rules otherwise.
compact = json.JSONEncoder(separators=(",", ":")).encode
_STRICT_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
_DIGITS_AS_ZERO = bytes(ord("0") if chr(c).isdigit() and c < 128 else ord(" ") for c in range(256))
_LONG_DIGIT_RUN = b"0" * 19  # 2**63 has 19 digits: shorter integers are exact in orjson too


def _parse_id(message: dict[str, Any]) -> str | int:
    if "id" not in message:
        raise ProtocolError("message has no 'id'")
    value = message["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ProtocolError(f"'id' must be a string or an integer, got {type(value).__name__}")
    if isinstance(value, str) and len(value) > MAX_ID_CHARS:
        raise ProtocolError(f"'id' is {len(value)} characters; at most {MAX_ID_CHARS} are allowed")
    if isinstance(value, int) and not -MAX_INT_ID <= value < MAX_INT_ID:
        raise ProtocolError("'id' integer is out of the 64-bit range")
    return value


def _submit(message: dict[str, Any], request_id: str | int, text: str, max_depth: int) -> Submit:
    if "data" not in message:
        raise ProtocolError("submit has no 'data' (send \"data\": null for no input)", request_id)
    endpoint = message.get("endpoint")
    if endpoint is not None and not isinstance(endpoint, str):
        raise ProtocolError("'endpoint' must be a string", request_id)
    progress = message.get("progress", True)
    if not isinstance(progress, bool):
        raise ProtocolError("'progress' must be true or false", request_id)
    data = message["data"]
    problem = depth_problem(data, text, max_depth)
    if problem is not None:
        raise ProtocolError(problem, request_id)
    try:
        priority, deadline_s = scheduling(message)
    except ValueError as exc:
        raise ProtocolError(str(exc), request_id) from None
    return Submit(request_id, endpoint, data, progress, len(text), priority, deadline_s)


def scheduling(message: dict[str, Any]) -> tuple[int, float | None]:
    """`priority` (an integer >= 0; 0 or absent = the endpoint's default) and `deadline_s` (seconds
    > 0, or absent) of a websocket submit or an HTTP body; ValueError names what is wrong."""
    priority = message.get("priority", 0)
    if priority is None:
        priority = 0
    if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
        raise ValueError(
            f"'priority' must be an integer >= 0 (1 is the highest level, 0 = the default), got {priority!r}"
        )
    deadline_s = message.get("deadline_s")
    if deadline_s is not None and (
        isinstance(deadline_s, bool) or not isinstance(deadline_s, (int, float)) or not deadline_s > 0
    ):
        raise ValueError(f"'deadline_s' must be a number of seconds > 0, got {deadline_s!r}")
    return priority, None if deadline_s is None else float(deadline_s)


def depth_problem(data: Any, raw: str | bytes, limit: int) -> str | None:
    """Why `data` (decoded from `raw`, a message or body holding it) is nested too deep, or None.

    Everything past the decoder recurses over the data: input_schema validation, the entrypoint,
    the result's encoding. Deep data runs them out of stack (a RecursionError that used to fail
    the request as the model's fault, or drop the websocket), so it is refused here, with the
    limit named. Cost: data can't be nested deeper than it has `[` and `{`, so counting those in
    the raw text (a C-speed translate; about 0.3 ns a byte, 1 us for 256 floats) settles almost
    every message; only one with more brackets than the limit has its decoded data walked, level
    by level with no recursion (about as long as decoding it took).
    """
    if len(raw) <= 2 * limit + 1 or _openers(raw) <= limit or not _deeper_than(data, limit):
        return None
    return f"data is nested deeper than server.max_depth={limit} levels of lists and objects"


def _openers(raw: str | bytes) -> int:
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    return len(raw.translate(None, _ALL_BUT_OPENERS))


def _deeper_than(data: Any, limit: int) -> bool:
    level = [data] if type(data) in _CONTAINERS else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for container in level:
            values = container.values() if type(container) is dict else container
            below += [value for value in values if type(value) in _CONTAINERS]
        level = below
    return False


_CONTAINERS = (list, dict)  # all a JSON decoder makes that holds other values
_ALL_BUT_OPENERS = bytes(c for c in range(256) if c not in b"[{")


def encode_id(request_id: str | int | None) -> str:
    return str(request_id) if type(request_id) is int else json.dumps(request_id)


def queued(request_id: str | int, rank: int, queue_size: int, eta_s: float | None, kind: str = "queued") -> str:
    eta = "null" if eta_s is None else f"{eta_s:.3f}"
    return f'{{"type":"{kind}","id":{encode_id(request_id)},"rank":{rank},"queue_size":{queue_size},"eta_s":{eta}}}'


def estimation(request_id: str | int, rank: int, queue_size: int, eta_s: float | None) -> str:
    return queued(request_id, rank, queue_size, eta_s, kind="estimation")


def started(request_id: str | int) -> str:
    return f'{{"type":"started","id":{encode_id(request_id)}}}'


def partial(request_id: str | int, data_json: str) -> str:
    return f'{{"type":"partial","id":{encode_id(request_id)},"data":{data_json}}}'


def timing(queue_s: float, run_s: float, batch_size: int) -> str:
    return f'{{"queue_s":{queue_s:.6f},"run_s":{run_s:.6f},"batch_size":{batch_size}}}'


def completed(request_id: str | int, data_json: str, timing_json: str) -> str:
    return f'{{"type":"completed","id":{encode_id(request_id)},"data":{data_json},"timing":{timing_json}}}'


def error(request_id: str | int | None, code: ErrorCode, message: str) -> str:
    body = json.dumps({"code": code.word, "message": message})
    return f'{{"type":"error","id":{encode_id(request_id)},"error":{body}}}'


def terminal(request_id: str | int, outcome: Completed | Failed) -> str:
    """The completed or error message that ends a request."""
    if isinstance(outcome, Completed):
        return completed(request_id, outcome.data_json, timing(outcome.queue_s, outcome.run_s, outcome.batch_size))
    return error(request_id, outcome.code, outcome.message)


def message_type(message: str) -> str:
    """The "type" of a server message built here (they all start with {"type":"...")."""
    start = len('{"type":"')
    return message[start : message.index('"', start)]
