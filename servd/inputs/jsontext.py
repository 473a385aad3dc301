"""JSON text, strictly: parse what clients send, encode what entrypoints return, bound its depth.

Pure functions; no I/O, no threads of their own (called on the loop and on worker threads alike).
Every transport that reads JSON (websocket messages, HTTP bodies, v2, OpenAI) and every result
encoded on a worker goes through here, so "what counts as JSON" is decided once.
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

MAX_DEPTH = 128  # server.max_depth's default (schemas/servd.schema.json)


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
