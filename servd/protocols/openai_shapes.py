"""OpenAI's chat shapes, to and from servd's: pure functions, no I/O (handlers/openai.py uses them).

A chat entrypoint keeps servd's contract: it gets the chat request as data and returns or yields
JSON. Here that request is checked and turned into the entrypoint's data (`parse_chat`), what the
entrypoint returns or yields is read as text, usage and finish reason (`piece`, `Answer`), and
the answer, the stream's chunks, the model cards and the errors are built in OpenAI's shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from servd.errors import ErrorCode
from servd.protocols import ws_messages as protocol

FINISH_REASONS = ("stop", "length", "content_filter")
# Fields servd acts on itself; everything else in the body reaches the entrypoint as sent.
NOT_FOR_ENTRYPOINT = ("model", "n", "stream", "stream_options", "servd", "max_completion_tokens")
CONTRACT = 'a chat entrypoint returns or yields text, or {"text", "usage", "finish_reason"}'
ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
# OpenAI's roles, in the order its own error lists them; content is optional only where it says so.
ROLES = ("system", "assistant", "user", "function", "tool", "developer")
MAX_STOP = 4  # OpenAI's limit on `stop` sequences
# Sampling numbers OpenAI bounds (temperature is checked with them): field -> (lowest, highest).
RANGES = {"temperature": (0, 2), "top_p": (0, 1), "presence_penalty": (-2, 2), "frequency_penalty": (-2, 2)}
# Fields OpenAI takes that servd can't honour: refused, not silently ignored.
UNSUPPORTED = {
    "logprobs": "servd's answer is the entrypoint's text, without token log probabilities",
    "top_logprobs": "servd's answer is the entrypoint's text, without token log probabilities",
}


class ChatError(ValueError):
    """A chat request servd can't take (400); `param` names the field, as OpenAI's errors do."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class NotAChatAnswer(ValueError):
    """The entrypoint returned or yielded something that is not a piece of a chat answer."""


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    data: dict[str, Any]  # what the entrypoint receives
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk holding the usage
    queue_updates: bool  # servd.queue_updates: rank and ETA as data chunks too, not only comments
    priority: int = 0
    deadline_s: float | None = None


def parse_chat(body: Any) -> ChatRequest:
    """A /v1/chat/completions body -> ChatRequest; ChatError names what is wrong.

    The entrypoint's data is the body less the fields servd acts on, with `max_tokens` (from
    max_completion_tokens or max_tokens; null when neither) and `stop` (a list) always present.
    """
    if not isinstance(body, dict):
        raise ChatError("the body must be a JSON object: an OpenAI chat completion request")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ChatError("'model' is required: the name of a model GET /v1/models lists", "model")
    _check_messages(body.get("messages"))
    if body.get("n") not in (None, 1):
        raise ChatError(f"n={body['n']!r} is not supported: servd answers with one choice; send n requests", "n")
    options = body.get("stream_options") or {}
    extra = body.get("servd") or {}
    for name, value in (("stream_options", options), ("servd", extra)):
        if not isinstance(value, dict):
            raise ChatError(f"'{name}' must be an object", name)
    data = {key: value for key, value in body.items() if key not in NOT_FOR_ENTRYPOINT}
    data["max_tokens"] = _max_tokens(body)
    data["stop"] = _stop(body.get("stop"))
    _check_ranges(body)
    _check_unsupported(body)
    try:
        priority, deadline_s = protocol.scheduling(extra)
    except ValueError as exc:
        raise ChatError(f"in 'servd': {exc}", "servd") from None
    return ChatRequest(
        model=model,
        data=data,
        stream=_flag(body, "stream"),
        include_usage=_flag(options, "include_usage", "stream_options."),
        queue_updates=_flag(extra, "queue_updates", "servd."),
        priority=priority,
        deadline_s=deadline_s,
    )


def _check_messages(messages: Any) -> None:
    """Each message as OpenAI checks it: an object, a known role, content where the role needs it
    (every role but an assistant's that carries tool_calls or function_call), text or a list of
    parts, and a tool message's tool_call_id. `param` is the path, as OpenAI names it."""
    if not isinstance(messages, list) or not messages:
        raise ChatError("'messages' must be a non-empty list of {role, content} objects", "messages")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise ChatError(f"Invalid type for '{where}': expected an object, but got {_kind(message)} instead.", where)
        role = _required(message, "role", where)
        if not isinstance(role, str) or role not in ROLES:
            supported = ", ".join(f"'{r}'" for r in ROLES[:-1]) + f", and '{ROLES[-1]}'"
            raise ChatError(f"Invalid value: {_shown(role)}. Supported values are: {supported}.", f"{where}.role")
        calls = role == "assistant" and (message.get("tool_calls") or message.get("function_call"))
        content = message.get("content") if calls else _required(message, "content", where)
        _check_content(content, f"{where}.content", nullable=role in ("assistant", "function"))
        if role == "tool" and not isinstance(_required(message, "tool_call_id", where), str):
            raise ChatError(f"Invalid type for '{where}.tool_call_id': expected a string.", f"{where}.tool_call_id")
        name = message.get("name")
        if name is not None and not isinstance(name, str):
            raise ChatError(f"Invalid type for '{where}.name': expected a string, but got {_kind(name)} instead.",
                            f"{where}.name")  # fmt: skip


def _required(message: dict[str, Any], key: str, where: str) -> Any:
    if key not in message:
        raise ChatError(f"Missing required parameter: '{where}.{key}'.", f"{where}.{key}")
    return message[key]


def _check_content(content: Any, where: str, nullable: bool) -> None:
    """Text, or a non-empty list of parts, each an object with a string `type` (OpenAI's parts:
    text, image_url, input_audio, file, refusal); null only for an assistant's or a function's."""
    if content is None and nullable:
        return
    if isinstance(content, str):
        return
    if isinstance(content, list) and content and all(isinstance(p, dict) and isinstance(p.get("type"), str)
                                                     for p in content):  # fmt: skip
        return
    if isinstance(content, list) and content:
        raise ChatError(f"Invalid '{where}': each part must be an object with a string 'type'.", where)
    if isinstance(content, list):
        raise ChatError(f"Invalid '{where}': empty array. Expected an array with minimum length 1.", where)
    raise ChatError(
        f"Invalid type for '{where}': expected one of a string or array of objects, but got {_kind(content)} instead.",
        where,
    )


def _kind(value: Any) -> str:
    """OpenAI's words for a JSON value's type, in its errors ("an integer", "null")."""
    if value is None:
        return "null"
    for kind, word in ((bool, "a boolean"), (int, "an integer"), (float, "a decimal"), (str, "a string"),
                       (list, "an array"), (dict, "an object")):  # fmt: skip
        if isinstance(value, kind):
            return word
    return type(value).__name__


def _max_tokens(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ChatError(f"'{name}' must be an integer >= 1, got {value!r}", name)
        return value
    return None


def _stop(stop: Any) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise ChatError("'stop' must be a non-empty string or a list of them", "stop")
    if len(stops) > MAX_STOP:
        raise ChatError(
            f"Invalid 'stop': array too long. Expected an array with maximum length {MAX_STOP}, "
            f"but got an array with length {len(stops)} instead.",
            "stop",
        )
    return stops


def _check_ranges(body: dict[str, Any]) -> None:
    for name, (low, high) in RANGES.items():
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ChatError(f"Invalid type for '{name}': expected a number, but got {_kind(value)} instead.", name)
        if value < low:
            raise ChatError(
                f"Invalid '{name}': decimal below minimum value. Expected a value >= {low}, "
                f"but got {_shown(value)} instead.",
                name,
            )
        if value > high:
            raise ChatError(
                f"Invalid '{name}': decimal above maximum value. Expected a value <= {high}, "
                f"but got {_shown(value)} instead.",
                name,
            )


def _check_unsupported(body: dict[str, Any]) -> None:
    """logprobs: false (and null) are what servd does anyway; true is refused, not ignored."""
    for name, why in UNSUPPORTED.items():
        value = body.get(name)
        if value is None or value is False:
            continue
        raise ChatError(f"'{name}' is not supported: {why}; leave it out (or false)", name)


def _flag(holder: dict[str, Any], name: str, prefix: str = "") -> bool:
    value = holder.get(name)
    if value is not None and not isinstance(value, bool):
        raise ChatError(f"'{prefix}{name}' must be true or false", (prefix + name).split(".")[0])
    return bool(value)


# -- what the entrypoint answers -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Piece:
    text: str = ""
    usage: dict[str, int] | None = None
    finish_reason: str | None = None


def piece(value: Any) -> Piece:
    """One returned or yielded value: text, null (nothing), or {"text", "usage", "finish_reason"},
    each key optional; usage is {"prompt_tokens": N, "completion_tokens": M}."""
    if value is None or isinstance(value, str):
        return Piece(value or "")
    if not isinstance(value, dict) or set(value) - {"text", "usage", "finish_reason"}:
        raise NotAChatAnswer(f"{CONTRACT}; got {_shown(value)}")
    text = value.get("text") or ""
    reason = value.get("finish_reason")
    if not isinstance(text, str):
        raise NotAChatAnswer(f"'text' must be a string; got {_shown(text)}")
    if reason is not None and reason not in FINISH_REASONS:
        raise NotAChatAnswer(f"'finish_reason' must be one of {', '.join(FINISH_REASONS)}; got {_shown(reason)}")
    return Piece(text, _usage(value.get("usage")), reason)


def _usage(usage: Any) -> dict[str, int] | None:
    if usage is None:
        return None
    keys = ("prompt_tokens", "completion_tokens")
    if not isinstance(usage, dict) or not all(_count(usage.get(key)) for key in keys):
        raise NotAChatAnswer(f"'usage' must be {{'prompt_tokens': N, 'completion_tokens': M}}; got {_shown(usage)}")
    counts = {key: usage[key] for key in keys}
    return {**counts, "total_tokens": sum(counts.values())}


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 100 else text[:100] + "..."


@dataclass(slots=True)
class Answer:
    """The answer so far: its pieces' text joined; the last usage and finish reason reported."""

    parts: list[str] = field(default_factory=list)
    usage: dict[str, int] | None = None
    reported_reason: str | None = None
    pieces: int = 0  # values received, empty ones too: a generator's answer is its pieces

    def add(self, piece: Piece) -> None:
        self.pieces += 1
        if piece.text:
            self.parts.append(piece.text)
        self.usage = piece.usage or self.usage
        self.reported_reason = piece.finish_reason or self.reported_reason

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def finish_reason(self, max_tokens: int | None) -> str:
        """What the entrypoint said; else `length` when its completion_tokens reached max_tokens;
        else `stop`. servd counts no tokens itself: it can't know the model's tokenizer."""
        if self.reported_reason is not None:
            return self.reported_reason
        used = self.usage["completion_tokens"] if self.usage else None
        return "length" if max_tokens is not None and used is not None and used >= max_tokens else "stop"


# -- what servd sends ------------------------------------------------------------------------


def completion(
    ident: str, created: int, model: str, answer: Answer, reason: str, servd: dict[str, Any]
) -> dict[str, Any]:
    """The non-streaming answer (object chat.completion); `usage` only when the entrypoint reported it."""
    message = {"role": "assistant", "content": answer.text, "refusal": None}
    body = _head(ident, "chat.completion", created, model)
    body["choices"] = [{"index": 0, "message": message, "logprobs": None, "finish_reason": reason}]
    if answer.usage is not None:
        body["usage"] = answer.usage
    body["servd"] = servd
    return body


def chunk(
    ident: str, created: int, model: str, delta: dict[str, Any], reason: str | None = None, **extra: Any
) -> dict[str, Any]:
    """One chat.completion.chunk of the one choice; `extra` adds top-level fields (`servd`)."""
    body = _head(ident, "chat.completion.chunk", created, model)
    body["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}]
    return {**body, **extra}


def bare_chunk(ident: str, created: int, model: str, **extra: Any) -> dict[str, Any]:
    """A chunk without choices: the usage chunk (stream_options.include_usage) or a queue update."""
    return {**_head(ident, "chat.completion.chunk", created, model), "choices": [], **extra}


def _head(ident: str, kind: str, created: int, model: str) -> dict[str, Any]:
    return {"id": ident, "object": kind, "created": created, "model": model, "system_fingerprint": None}


def timing(request_id: str | int, queue_s: float, run_s: float, batch_size: int) -> dict[str, Any]:
    """The `servd` field of an answer and of a stream's last chunk: servd's request id and timing."""
    return {
        "id": request_id,
        "timing": {"queue_s": round(queue_s, 6), "run_s": round(run_s, 6), "batch_size": batch_size},
    }


def model_card(model: str, created: int) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": created, "owned_by": "servd"}


def model_list(cards: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": cards}


def error(code: ErrorCode, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape; `code` is servd's word, `type` OpenAI's class of it (by HTTP status)."""
    status = code.http_status
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code.word}}
