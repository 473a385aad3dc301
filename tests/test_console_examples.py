"""The example request the console and /openapi.json offer for each endpoint is accepted (issue 24).

A newcomer's first request is the one the console fills in: it used to be "hello" for a tensor
endpoint (invalid_input) and for a chat endpoint (500), and nothing mentioned
/v1/chat/completions. Now one function (servd.protocols.examples) makes the example from the
endpoint's declaration, and these tests send it, as the console's snippets and try-it form do,
through the real daemon: for every endpoint of the repo's servd.yaml and examples/*.yaml, and for
declarations those don't exercise (other datatypes, unbatched tensors, schemas with $ref, allOf,
anyOf, bounds, a chat endpoint with an input_schema).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate as validate_openapi

from servd.config.spec import parse
from servd.protocols import examples
from tests.harness import Running, serve
from tests.test_console_first_paint import first_state

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = [ROOT / "servd.yaml", *sorted((ROOT / "examples").glob("*.yaml"))]
SERVD_CONFIGS = [p for p in CONFIGS if "endpoints:" in p.read_text()]

MORE = """
version: 1
endpoints:
  kinds:
    entrypoint: examples.tensors:identity
    batch: {max_size: 8, max_delay_ms: 2}
    tensors:
      inputs:
        - {name: f, datatype: FP32, shape: [-1, 3]}
        - {name: b, datatype: BOOL, shape: [-1]}
        - {name: s, datatype: BYTES, shape: [-1, 2]}
        - {name: u, datatype: UINT8, shape: [-1, 2, 2]}
      outputs:
        - {name: f, datatype: FP32, shape: [-1, 3]}
        - {name: b, datatype: BOOL, shape: [-1]}
        - {name: s, datatype: BYTES, shape: [-1, 2]}
        - {name: u, datatype: UINT8, shape: [-1, 2, 2]}
        - {name: rows, datatype: INT64, shape: [-1]}
  unbatched:
    entrypoint: examples.tensors:identity
    tensors:
      inputs: [{name: x, datatype: FP64, shape: [2, -1]}]
      outputs: [{name: x, datatype: FP64, shape: [2, -1]}, {name: rows, datatype: INT64, shape: [-1]}]
  tree:
    entrypoint: examples.echo:echo
    input_schema:
      $ref: "#/$defs/node"
      $defs:
        node:
          type: object
          required: [label, kids]
          properties:
            label: {type: string, minLength: 2, maxLength: 3}
            kids: {type: array, items: {$ref: "#/$defs/node"}}
  mixed:
    entrypoint: examples.echo:echo
    api_open: false
    input_schema:
      allOf:
        - {type: object, required: [n], properties: {n: {type: integer, exclusiveMinimum: 4, multipleOf: 3}}}
        - required: [mode]
          properties: {mode: {anyOf: [{enum: [fast, slow]}, {type: "null"}]}}
  given:
    entrypoint: examples.echo:echo
    input_schema:
      type: array
      items: {type: number, maximum: 1}
      examples: [[5], [0.5, 1]]
  talk:
    entrypoint: examples.chat:chat
    openai: {model: talker}
    input_schema:
      type: object
      required: [messages]
      properties: {messages: {type: array, minItems: 1}}
"""


def _port_free(text: str) -> str:
    return re.sub(r"(?m)^(\s*port:)\s*\d+", r"\1 0", text)


async def _offered(d: Running) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the console offers (the page's first state) and what /openapi.json offers."""
    state = first_state((await d.http("GET", "/")).body.decode())
    doc = (await d.http("GET", "/openapi.json")).json()
    return state["examples"], doc


async def _each_example_is_accepted(d: Running) -> list[str]:
    """POST every endpoint's example (and submit it over the websocket, as the try-it form does; and
    to /v1/chat/completions for a chat endpoint); returns what was sent, for the report."""
    offered, doc = await _offered(d)
    validate_openapi(doc)  # the chat path and the tensors' schemas included
    ws = await d.ws()
    sent = []
    for name, endpoint in d.daemon.spec.endpoints.items():
        data = offered[name]["data"]
        assert doc["components"]["schemas"][f"{name}.input"]["examples"][0] == data, f"{name}: one example"
        if endpoint.api_open:
            body = doc["paths"][f"/v1/endpoints/{name}"]["post"]["requestBody"]["content"]["application/json"]
            assert body["examples"]["example"]["value"] == {"data": data}, name
            reply = await d.post(name, data)
            assert reply.status == 200, f"{name}: {json.dumps(data)[:200]} -> {reply.status} {reply.body[:300]!r}"
            assert "data" in reply.json()
        await ws.submit(f"try-{name}", name, data)
        end = await ws.terminal(f"try-{name}")
        assert end["type"] == "completed", f"{name} over the websocket: {end}"
        sent.append(f"{name}: {json.dumps(data)[:60]}")
        chat = offered[name]["chat"]
        assert (chat is not None) == (endpoint.openai is not None), name
        if chat is not None:
            chat_body = doc["paths"][examples.CHAT_PATH]["post"]["requestBody"]["content"]["application/json"]
            assert chat_body["examples"][endpoint.openai.model]["value"] == chat, name
            reply = await d.http("POST", examples.CHAT_PATH, chat)
            assert reply.status == 200, f"{name}: {chat} -> {reply.status} {reply.body[:300]!r}"
            answer = reply.json()
            assert answer["object"] == "chat.completion" and answer["model"] == endpoint.openai.model
            assert isinstance(answer["choices"][0]["message"]["content"], str)
    return sent


@pytest.mark.parametrize("path", SERVD_CONFIGS, ids=lambda p: p.name)
async def test_every_example_the_repo_configs_offer_is_accepted(tmp_path, path):
    """For each endpoint of servd.yaml and examples/*.yaml, the request the console fills in, its
    curl snippet and /openapi.json show the same example, and sending it completes: tensors as
    ones of the declared shape, the chat endpoint a messages list (and its curl for
    /v1/chat/completions answers), a schema's endpoint a value that meets it."""
    async with serve(tmp_path, _port_free(path.read_text())) as d:
        sent = await _each_example_is_accepted(d)
    print("\n".join(sent))


async def test_examples_of_other_declarations_are_accepted(tmp_path):
    """Datatypes besides INT32 (floats, booleans, strings, bytes), an unbatched tensor with a
    dynamic dimension, a recursive $ref schema, allOf with anyOf and bounds, a schema whose first
    own example fails it, and a chat endpoint with an input_schema: each example offered is
    accepted over HTTP (where the API is open), the websocket and /v1/chat/completions."""
    async with serve(tmp_path, MORE) as d:
        await _each_example_is_accepted(d)
        offered, _ = await _offered(d)
    assert offered["given"]["data"] == [0.5, 1], "the schema's own example that passes it"
    assert offered["kinds"]["data"]["s"] == [["a", "a"]]


SCHEMAS = [
    None,
    {"type": "array", "minItems": 64, "maxItems": 64, "items": {"type": "number", "minimum": 0, "maximum": 16}},
    {"type": "object", "required": ["text"], "properties": {"text": {"type": "string", "minLength": 8}}},
    {"type": "object", "properties": {"n": {"type": "integer", "exclusiveMinimum": 3}, "b": {"type": "boolean"}}},
    {"type": "string", "enum": ["red", "green"]},
    {"type": ["null", "number"], "maximum": -5},
    {"type": "object", "properties": {"x": {"const": 7}}, "required": ["x"]},
    {"type": "array", "items": {"type": "string"}, "examples": [["given"]]},
    {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 1.5},
    {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    {"type": "integer", "minimum": 3, "multipleOf": 5},
    {"anyOf": [{"type": "string", "minLength": 3}, {"type": "integer"}]},
    {"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "minItems": 2},
    {"type": "string", "format": "email", "maxLength": 40},
    {"$defs": {"t": {"type": "array", "items": {"$ref": "#/$defs/t"}}}, "$ref": "#/$defs/t"},
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: json.dumps(s)[:40])
def test_the_example_built_for_an_input_schema_meets_it(tmp_path, schema):
    """The try-it form starts from a value the endpoint's schema accepts, whatever its shape."""
    config = {"version": 1, "endpoints": {"e": {"entrypoint": "examples.echo:echo", "input_schema": schema}}}
    (tmp_path / "servd.yaml").write_text(json.dumps(config))  # JSON is YAML
    spec = parse(tmp_path / "servd.yaml")
    value = examples.data_example(spec.endpoints["e"])
    jsonschema.validate(value, schema or {})
