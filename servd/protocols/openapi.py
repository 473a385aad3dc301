"""GET /openapi.json: an OpenAPI 3.1 document of the running config. Pure: a function of a Spec.

Each endpoint gets its own path, `/v1/endpoints/{name}` written out, so that its request body can
carry its own `input_schema` (OpenAPI 3.1 schemas are JSON Schema 2020-12, as input_schema is;
each is a component, `{name}.input`, which documents the websocket's `data` as well) and
its responses list only the error codes it can answer with (invalid_input only with a schema,
client_limit only with max_per_client, ...). The websocket queue can't be described in OpenAPI;
`GET /v1/ws` is listed with its 101 answer and a pointer to the websocket protocol's page (docs/protocols/websocket.md).

`ERROR_WORDS` says what each error code means in plain words; the console shows them beside
the server's own message, read from this document (components.schemas.ErrorCode).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from servd.config.spec import EndpointSpec, Spec
from servd.errors import ErrorCode
from servd.inputs.declared import TensorSpec
from servd.protocols.examples import CHAT_PATH, chat_example, data_example

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"
SSE = "text/event-stream"

# What each code means to someone who sent a request: the console shows these beside the message.
ERROR_WORDS: dict[ErrorCode, str] = {
    ErrorCode.BAD_REQUEST: "The request was malformed: not JSON, no data, or data nested too deep.",
    ErrorCode.UNAUTHORIZED: "This servd needs a token, and none or a wrong one was given.",
    ErrorCode.API_CLOSED: "This endpoint's HTTP API is closed (api_open: false); use its websocket queue.",
    ErrorCode.FORBIDDEN_ORIGIN: "The web page calling servd is not in server.allowed_origins.",
    ErrorCode.UNKNOWN_ENDPOINT: "No endpoint of that name is served.",
    ErrorCode.NOT_FOUND: "No such path on this server.",
    ErrorCode.METHOD_NOT_ALLOWED: "This path does not serve that HTTP method.",
    ErrorCode.TOO_LARGE: "The request is larger than server.max_message_bytes allows.",
    ErrorCode.UNKNOWN_HOST: "This server does not answer to the host name used (server.allowed_hosts).",
    ErrorCode.INVALID_INPUT: "The data does not match the endpoint's input_schema; the message says where.",
    ErrorCode.CLIENT_LIMIT: "You already have queue.max_per_client requests waiting at this endpoint.",
    ErrorCode.ENDPOINT_FAILED: "The model raised an error on this input; the message names it.",
    ErrorCode.QUEUE_FULL: "The queue is full (queue.max_size); try again shortly.",
    ErrorCode.UNAVAILABLE: "The endpoint is being removed, or the daemon is shutting down.",
    ErrorCode.TIMEOUT: "The request took longer than its deadline (queue.timeout_s or deadline_s).",
    ErrorCode.CANCELLED: "The request was cancelled before it finished.",
}

# Errors any POST may meet, whatever the endpoint's settings.
ALWAYS = (
    ErrorCode.BAD_REQUEST,
    ErrorCode.FORBIDDEN_ORIGIN,
    ErrorCode.UNKNOWN_ENDPOINT,
    ErrorCode.TOO_LARGE,
    ErrorCode.UNKNOWN_HOST,
    ErrorCode.ENDPOINT_FAILED,
    ErrorCode.UNAVAILABLE,
    ErrorCode.TIMEOUT,  # a request's own deadline_s, even without queue.timeout_s
)
OPERATIONS_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
OBJECT: dict[str, Any] = {"type": "object"}
TEXT: dict[str, Any] = {"type": "string"}
TENSOR_JSON = {
    "BOOL": "boolean",
    "BYTES": "string",
    **{f"{k}{n}": "integer" for k in ("INT", "UINT") for n in (8, 16, 32, 64)},
}


def document(spec: Spec, version: str, generation: int) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `spec`: one path per endpoint, the operator routes, the errors."""
    tokens = spec.server.tokens_file is not None
    paths: dict[str, Any] = {}
    inputs: dict[str, Any] = {}
    for endpoint in spec.endpoints.values():
        paths[f"/v1/endpoints/{endpoint.name}"] = _endpoint_path(endpoint, tokens)
        inputs[input_component(endpoint.name)] = input_schema(endpoint)
    chat = [endpoint for endpoint in spec.endpoints.values() if endpoint.openai is not None and endpoint.api_open]
    if chat:
        paths[CHAT_PATH] = _chat_path(chat, tokens)
    paths.update(_operator_paths(tokens))
    components = _components(tokens)
    components["schemas"].update(inputs)
    doc: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "servd",
            "version": version,
            "description": (
                f"The endpoints of this servd, from its config (generation {generation}). Every endpoint is "
                "also served over the websocket queue, GET /v1/ws, which this document can't describe: "
                "see docs/protocols/websocket.md."
            ),
        },
        "paths": paths,
        "components": components,
    }
    if tokens:
        doc["security"] = [{"bearer": []}]
    return doc


def _endpoint_path(endpoint: EndpointSpec, tokens: bool) -> dict[str, Any]:
    operation = OPERATIONS_ID_UNSAFE.sub("_", endpoint.name)
    post: dict[str, Any] = {
        "operationId": f"call_{operation}",
        "summary": f"Call {endpoint.name} ({endpoint.entrypoint})",
        "tags": ["endpoints"],
    }
    if not endpoint.api_open:
        post["description"] = (
            f"The HTTP API of {endpoint.name} is closed (api_open: false): every POST gets 403 api_closed. "
            "Use the websocket queue, GET /v1/ws, where requests wait their turn."
        )
        post["responses"] = _error_responses([ErrorCode.API_CLOSED, *_auth_codes(tokens)])
    else:
        post["description"] = (
            "Queue one request and answer with its result. With Accept: text/event-stream the answer is "
            "the websocket's messages (queued, estimation, started, partial, completed or error) as events."
        )
        if endpoint.openai is not None:
            post["description"] += (
                f" It is also the OpenAI chat model {endpoint.openai.model!r}: POST {CHAT_PATH} with "
                f'"model": "{endpoint.openai.model}" gets OpenAI\'s answer shapes; here its data is the chat request.'
            )
        post["requestBody"] = _request_body(endpoint)
        post["responses"] = {"200": _result_response(), **_error_responses(post_errors(endpoint, tokens))}
    get = {
        "operationId": f"describe_{operation}",
        "summary": f"{endpoint.name}'s effective config and live stats",
        "tags": ["endpoints"],
        "responses": {
            "200": {"description": "As one item of GET /v1/endpoints.", "content": {JSON: {"schema": OBJECT}}},
            **_error_responses([*_auth_codes(tokens), ErrorCode.UNKNOWN_ENDPOINT]),
        },
    }
    return {"post": post, "get": get}


def post_errors(endpoint: EndpointSpec, tokens: bool) -> list[ErrorCode]:
    """The error codes a POST to `endpoint` can get, from its settings."""
    codes = [*ALWAYS, *_auth_codes(tokens)]
    if endpoint.input_schema is not None:
        codes.append(ErrorCode.INVALID_INPUT)
    if endpoint.queue.max_size is not None or endpoint.queue.admit == "predicted":
        codes.append(ErrorCode.QUEUE_FULL)
    if endpoint.queue.max_per_client is not None:
        codes.append(ErrorCode.CLIENT_LIMIT)
    return codes


def _auth_codes(tokens: bool) -> list[ErrorCode]:
    return [ErrorCode.UNAUTHORIZED] if tokens else []


def input_component(name: str) -> str:
    """The component holding endpoint `name`'s input schema (the websocket's `data` too, so it is
    there for api_open: false endpoints as well). Endpoint names are valid component names."""
    return f"{name}.input"


def _request_body(endpoint: EndpointSpec) -> dict[str, Any]:
    data = {"$ref": f"#/components/schemas/{input_component(endpoint.name)}"}
    sample = data_example(endpoint)
    levels = endpoint.queue.priority_levels
    schema = {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": data,
            "priority": {
                "type": "integer", "minimum": 0, "maximum": levels,
                "description": f"1 is the highest of {levels} level(s); 0 or absent = queue.default_priority.",
            },
            "deadline_s": {
                "type": "number", "exclusiveMinimum": 0,
                "description": "This request's own deadline in seconds, tighter than queue.timeout_s.",
            },
        },
    }  # fmt: skip
    return {
        "required": True,
        "content": {JSON: {"schema": schema, "examples": {"example": {"value": {"data": sample}}}}},
    }


def input_schema(endpoint: EndpointSpec) -> dict[str, Any]:
    """The endpoint's input_schema as a component: its own `$ref`s ("#/$defs/...", "#") rewritten to
    point inside the component, since in this document "#" is the document (tools differ on `$id`
    scoping, a rewritten pointer works in all); declared tensors as the object of nested lists
    servd's JSON takes; any JSON without either. `examples` (an annotation: it validates nothing)
    starts with the example the try-it form and the snippets use (examples.data_example)."""
    sample = data_example(endpoint)
    if endpoint.tensors is not None:
        schema = _tensors_schema(endpoint.tensors.inputs)
    elif endpoint.input_schema is None:
        words = "Any JSON: this endpoint has no input_schema."
        if endpoint.openai is not None:
            words += f" Its model takes a chat request ({{messages, max_tokens, ...}}), as {CHAT_PATH} passes it."
        schema = {"description": words}
    else:
        here = f"#/components/schemas/{input_component(endpoint.name)}"
        schema = _plain(endpoint.input_schema, lambda ref: here + ref[1:] if ref.startswith("#") else ref)
    own = schema.get("examples")
    schema["examples"] = [sample, *(value for value in own if value != sample)] if isinstance(own, list) else [sample]
    return schema


def _tensors_schema(inputs: tuple[TensorSpec, ...]) -> dict[str, Any]:
    """Declared tensors in servd's JSON: an object of input name -> nested lists, one level a
    dimension (-1: any size), of the datatype's JSON values. The server checks them itself."""
    properties: dict[str, Any] = {}
    for tensor in inputs:
        value: dict[str, Any] = {"type": TENSOR_JSON.get(tensor.datatype, "number")}
        for size in reversed(tensor.shape):
            value = {"type": "array", "items": value, **({"minItems": size, "maxItems": size} if size >= 0 else {})}
        properties[tensor.name] = {**value, "description": f"{tensor.datatype} {list(tensor.shape)} (-1: any size)"}
    return {
        "type": "object",
        "description": "Declared tensors (tensors.inputs): each input's values as nested lists.",
        "required": [t.name for t in inputs],
        "properties": properties,
        "additionalProperties": False,
    }


def _chat_path(endpoints: list[EndpointSpec], tokens: bool) -> dict[str, Any]:
    """POST /v1/chat/completions, with an example body for each model it serves."""
    examples = {
        e.openai.model: {"summary": f"{e.name}'s model", "value": chat_example(e)} for e in endpoints if e.openai
    }
    models = ", ".join(sorted(examples))
    openai_error = {"description": "An OpenAI error object: {error: {message, type, param, code}}.",
                    "content": {JSON: {"schema": OBJECT}}}  # fmt: skip
    return {
        "post": {
            "operationId": "chat_completions",
            "summary": f"OpenAI-compatible chat completions (models: {models})",
            "description": "OpenAI's request and answer shapes; `stream: true` answers with server-sent events. "
            "The request waits its turn in the endpoint's queue like any other.",
            "tags": ["openai"],
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": OBJECT, "examples": examples}},
            },
            "responses": {
                "200": {"description": "A chat.completion object, or chat.completion.chunk events with stream: true.",
                        "content": {JSON: {"schema": OBJECT}, SSE: {"schema": TEXT}}},
                "4XX": openai_error,
                "5XX": openai_error,
                **_error_responses(_auth_codes(tokens)),
            },
        }
    }  # fmt: skip


def _plain(value: Any, ref: Callable[[str], str] = str) -> Any:
    """Mappings (the spec's read-only proxies) and lists as plain JSON values, each `$ref` passed
    through `ref`."""
    if isinstance(value, Mapping):
        return {str(k): ref(v) if k == "$ref" and isinstance(v, str) else _plain(v, ref) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, ref) for v in value]
    return value


def _result_response() -> dict[str, Any]:
    return {
        "description": "The result, with how long it waited and ran and the batch it ran in.",
        "content": {
            JSON: {"schema": {"$ref": "#/components/schemas/Result"}},
            SSE: {"schema": {"type": "string", "description": "event: queued, estimation, started, partial, "
                                                              "then completed or error; data: the message as JSON"}},
        },
    }  # fmt: skip


def _error_responses(codes: Iterable[ErrorCode]) -> dict[str, Any]:
    """Error answers grouped by HTTP status; each lists its codes and restricts `code` to them."""
    by_status: dict[int, list[ErrorCode]] = {}
    for code in codes:
        by_status.setdefault(code.http_status, []).append(code)
    responses: dict[str, Any] = {}
    for status in sorted(by_status):
        group = by_status[status]
        schema = {
            "$ref": "#/components/schemas/Error",
            "properties": {"error": {"properties": {"code": {"enum": [c.word for c in group]}}}},
        }
        response: dict[str, Any] = {
            "description": " ".join(f"{c.word}: {ERROR_WORDS[c]}" for c in group),
            "content": {JSON: {"schema": schema}},
        }
        if ErrorCode.QUEUE_FULL in group:
            response["headers"] = {
                "Retry-After": {"description": "Seconds: the ETA of a new request.", "schema": {"type": "integer"}}
            }
        if ErrorCode.UNAUTHORIZED in group:
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        responses[str(status)] = response
    return responses


def _operator_paths(tokens: bool) -> dict[str, Any]:
    auth = _error_responses(_auth_codes(tokens))

    def route(summary: str, media: str, schema: dict[str, Any], *, open_: bool = False) -> dict[str, Any]:
        responses = {"200": {"description": summary, "content": {media: {"schema": schema}}}}
        operation: dict[str, Any] = {"summary": summary, "tags": ["operations"], "responses": responses}
        if open_:
            operation["security"] = []  # probes need no token
        else:
            responses.update(auth)
        return {"get": operation}

    obj, text = OBJECT, TEXT
    ws = {
        "summary": "The websocket queue: many requests, any endpoint, with rank, ETA and partial results",
        "description": "Open with a websocket handshake (token: Authorization, ?token=, or the subprotocol "
        "servd.bearer.<base64url token> beside servd). Messages: see docs/protocols/websocket.md.",
        "tags": ["endpoints"],
        "responses": {"101": {"description": "Switching to the websocket protocol."}, **auth},
    }
    return {
        "/v1/ws": {"get": ws},
        "/v1/endpoints": route("Every endpoint's effective config and live stats", JSON, obj),
        "/v1/status": route("Config path, generation, last reload, uptime", JSON, obj),
        "/v1/events": route(
            "Server-sent events: hello (history, recent reloads), status about once a second, reload on each reload",
            SSE, text,
        ),
        "/openapi.json": route("This document", JSON, obj),
        "/metrics": route("Prometheus metrics", "text/plain", text),
        "/healthz": route("The process is alive", JSON, obj, open_=True),
        "/readyz": route("Every endpoint's model is loaded (503 while loading or draining)", JSON, obj, open_=True),
    }  # fmt: skip


def _components(tokens: bool) -> dict[str, Any]:
    components: dict[str, Any] = {
        "schemas": {
            "ErrorCode": {
                "description": "The wire's error codes, the same words on the websocket and over HTTP.",
                "oneOf": [
                    {"const": c.word, "description": ERROR_WORDS[c], "x-http-status": c.http_status} for c in ErrorCode
                ],
            },
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {"code": {"$ref": "#/components/schemas/ErrorCode"}, "message": TEXT},
                    }
                },
            },
            "Timing": {
                "type": "object",
                "properties": {
                    "queue_s": {"type": "number", "description": "Seconds from admission to start."},
                    "run_s": {"type": "number", "description": "Seconds the call (batch) ran."},
                    "batch_size": {"type": "integer", "description": "Requests in that call."},
                },
            },
            "Result": {
                "type": "object",
                "required": ["data", "timing"],
                "properties": {"data": {"description": "What the entrypoint returned."},
                               "timing": {"$ref": "#/components/schemas/Timing"}},
            },
        }
    }  # fmt: skip
    if tokens:
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "A line of server.tokens_file."}
        }
    return components
