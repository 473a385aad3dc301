"""The example request each endpoint is offered with, from its declaration. Pure: a function of a spec.

One place decides what a newcomer is shown to send, so that what the console's try-it form starts
from, its copyable snippets, the index page's first state and /openapi.json's `examples` all agree,
and each one is accepted (tests/test_console_examples.py sends every one in the repo's configs):

- `tensors.inputs`: an object of input name -> nested lists of ones, of the declared shape (a
  dynamic dimension, -1, as 1 row) and datatype (integers, floats, booleans or strings); null
  for a tensor of more than MAX_ELEMENTS values, too large to offer;
- an `openai:` block: the chat shape, a `messages` list (its entrypoint takes the chat request as
  data), and for /v1/chat/completions the same with `model` (`chat_example`);
- `input_schema`: the schema's own `examples`, `default`, `const` or first `enum` value when one
  passes the schema, else a minimal value built from it (`schema_example`);
- neither: any JSON will do, "hello".

Every candidate is checked against the input_schema with Draft 2020-12, as the server checks it,
and the first that passes is taken; a schema that none of them meets (a `pattern`, a `not`) still
gets the built value, and the server's check has the last word. What a schema gets is worked out
once per schema (a millisecond or two) and kept, as JSON text, in a small cache: each caller gets
a fresh copy. Safe from any thread.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

import jsonschema

from servd.config.spec import EndpointSpec
from servd.inputs.declared import TensorSpec

PLAIN = "hello"  # an endpoint that takes any JSON
CHAT_PATH = "/v1/chat/completions"
CHAT_MESSAGES: tuple[dict[str, str], ...] = ({"role": "user", "content": "How does the queue work?"},)
CHAT_MAX_TOKENS = 16
MAX_ELEMENTS = 1 << 18  # a tensor example's values at most (cheap: rows repeated); larger ones get None
MAX_BUILT = 1 << 13  # values built for a schema at most (about 3 us each): nested minItems stop there
MAX_DEPTH = 32  # nested schemas (and $ref cycles) deeper than this get null
SHALLOW = 4  # below this depth only what the schema requires is built: recursive schemas end
ONE = {"BOOL": True, "BYTES": "a"}  # the "one" of each datatype that isn't a number


def data_example(endpoint: EndpointSpec) -> Any:
    """The `data` to POST to /v1/endpoints/{name} or submit over the websocket (a fresh value)."""
    if endpoint.tensors is not None:
        return {tensor.name: tensor_example(tensor) for tensor in endpoint.tensors.inputs}
    if endpoint.input_schema is None:
        return _chat_data() if endpoint.openai is not None else PLAIN
    schema_text = json.dumps(_plain(endpoint.input_schema), sort_keys=True, default=str)  # a YAML date: text
    return json.loads(_checked_example(schema_text, endpoint.openai is not None))


@functools.lru_cache(maxsize=256)
def _checked_example(schema_text: str, chat: bool) -> str:
    """The example for a schema, as JSON text: made once per schema (building and checking it
    takes a millisecond or two, and every page load and /openapi.json asks), copied per caller."""
    schema = json.loads(schema_text)
    candidates: list[Any] = [_chat_data()] if chat else []
    candidates += [*_declared(schema), schema_example(schema)]
    return json.dumps(_first_valid(candidates, schema), default=str)


def chat_example(endpoint: EndpointSpec) -> dict[str, Any] | None:
    """The body to POST to /v1/chat/completions for an endpoint with an `openai:` block; else None.
    Its fields besides `model` are what the entrypoint receives as data (so they meet input_schema
    when `data_example`'s chat shape does)."""
    if endpoint.openai is None:
        return None
    data = data_example(endpoint)
    body = dict(data) if isinstance(data, dict) and "messages" in data else _chat_data()
    return {"model": endpoint.openai.model, **body}


def tensor_example(tensor: TensorSpec) -> Any:
    """Nested lists of ones of `tensor`'s shape (-1 as 1) and datatype; None for a tensor of more
    than MAX_ELEMENTS values (too large to offer as an example: a client builds it)."""
    sizes = [1 if size < 0 else size for size in tensor.shape]
    if math.prod(sizes) > MAX_ELEMENTS:
        return None
    value: Any = ONE.get(tensor.datatype, 1.0 if tensor.datatype.startswith("FP") else 1)
    for size in reversed(sizes):
        value = [value] * size  # the same row object repeated: JSON writes it out each time
    return value


def schema_example(schema: Mapping[str, Any] | None) -> Any:
    """A value meant to meet `schema`: its own example, default, const or first enum value, else
    one built from its type and bounds (the first branch of anyOf/oneOf, allOf merged, local
    `$ref`s followed). Not a validator: `data_example` checks what this builds."""
    if not schema:
        return PLAIN
    return _build(schema, schema, 0, [MAX_BUILT])


def _chat_data() -> dict[str, Any]:
    return {"messages": [dict(m) for m in CHAT_MESSAGES], "max_tokens": CHAT_MAX_TOKENS}


def _declared(schema: Mapping[str, Any]) -> Iterator[Any]:
    """The schema's own values, in the order a reader would look for them."""
    examples = schema.get("examples")
    if isinstance(examples, list):
        yield from (_plain(value) for value in examples)
    for key in ("default", "const"):
        if key in schema:
            yield _plain(schema[key])
    if isinstance(schema.get("enum"), list):
        yield from (_plain(value) for value in schema["enum"])


def _first_valid(candidates: list[Any], schema: Mapping[str, Any]) -> Any:
    validator = jsonschema.Draft202012Validator(_plain(schema))
    for candidate in candidates:
        try:
            if validator.is_valid(candidate):
                return candidate
        except (jsonschema.exceptions.RefResolutionError, RecursionError):  # an unresolvable $ref
            break
    return candidates[-1]


def _build(schema: Any, root: Mapping[str, Any], depth: int, budget: list[int]) -> Any:
    """`budget`: how many more values may be built (nested minItems can't make a huge example)."""
    budget[0] -= 1
    if not isinstance(schema, Mapping) or depth > MAX_DEPTH:
        return None if depth > MAX_DEPTH else PLAIN
    own = next(_declared(schema), _NOTHING)
    if own is not _NOTHING:
        return own
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#"):
        target = _pointer(root, ref[1:])
        if target is not None:
            return _build({**target, **{k: v for k, v in schema.items() if k != "$ref"}}, root, depth + 1, budget)
    if isinstance(schema.get("allOf"), list):
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            if isinstance(part, Mapping):
                merged = _merge(merged, part)
        return _build(merged, root, depth + 1, budget)
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            others = {k: v for k, v in schema.items() if k != key}
            return _build(_merge(others, schema[key][0]), root, depth + 1, budget)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties") or {}
        names = schema.get("required") or (list(properties) if depth < SHALLOW else [])
        return {name: _build(properties.get(name, {}), root, depth + 1, budget) for name in names}
    if kind == "array" or (kind is None and ("items" in schema or "prefixItems" in schema)):
        prefix = [_build(item, root, depth + 1, budget) for item in schema.get("prefixItems") or []]
        wanted = int(schema.get("minItems", 1 if depth < SHALLOW else 0))  # a recursive schema ends in []
        items = schema.get("items")
        rest = []
        for _ in range(max(wanted, len(prefix)) - len(prefix)):
            if budget[0] <= 0:
                break  # cut short: the server's check has the last word
            budget[0] -= 1
            rest.append(_build(items if isinstance(items, Mapping) else {}, root, depth + 1, budget))
        return prefix + rest
    if kind in ("number", "integer"):
        return _number(schema, kind == "integer")
    if kind == "string":
        return _string(schema)
    return {"boolean": False, "null": None}.get(str(kind), PLAIN)


_NOTHING = object()


def _pointer(root: Mapping[str, Any], pointer: str) -> Mapping[str, Any] | None:
    """The part of `root` at a JSON pointer ("" is root itself); None where there is none."""
    found: Any = root
    for part in [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]:
        if not isinstance(found, Mapping) or part not in found:
            return None
        found = found[part]
    return found if isinstance(found, Mapping) else None


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Two schemas as one, for allOf and a branch of anyOf: properties and required united."""
    merged = {**a, **b}
    if isinstance(a.get("properties"), Mapping) and isinstance(b.get("properties"), Mapping):
        merged["properties"] = {**a["properties"], **b["properties"]}
    if isinstance(a.get("required"), list) and isinstance(b.get("required"), list):
        merged["required"] = list(dict.fromkeys([*a["required"], *b["required"]]))
    return merged


def _number(schema: Mapping[str, Any], integer: bool) -> float | int:
    """The middle of the bounds, or the lower (else upper) one, a multiple of multipleOf."""
    low, high = schema.get("minimum"), schema.get("maximum")
    above, below = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    step = schema.get("multipleOf")
    lows = [v for v in (low, None if above is None else above + (1 if integer else 0)) if v is not None]
    highs = [v for v in (high, None if below is None else below - (1 if integer else 0)) if v is not None]
    value: float
    if lows and highs:
        value = max(lows) if integer else (max(lows) + min(highs)) / 2
    elif lows:
        value = max(lows) + (1 if above is not None and not integer and max(lows) == above else 0)
    elif highs:
        value = min(0, min(highs) - (0 if integer else 1))
    else:
        value = 0
    if integer:
        value = math.ceil(value)
    if isinstance(step, (int, float)) and not isinstance(step, bool) and step > 0:
        value = math.ceil(value / step) * step
    return int(value) if integer or float(value).is_integer() else value


def _string(schema: Mapping[str, Any]) -> str:
    formats = {"date-time": "2025-01-01T00:00:00Z", "date": "2025-01-01", "email": "user@example.com",
               "uri": "https://example.com/", "uuid": "00000000-0000-0000-0000-000000000000"}  # fmt: skip
    text = formats.get(str(schema.get("format")), "text")
    low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
    text = text.ljust(low, "x")
    return text[: int(high)] if high is not None and len(text) > int(high) and int(high) >= low else text


def _plain(value: Any) -> Any:
    """Mappings (the spec's read-only proxies) and lists as plain JSON values."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
