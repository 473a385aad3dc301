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
    _check_temperature(body.get("temperature"))
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
    if not isinstance(messages, list) or not messages:
        raise ChatError("'messages' must be a non-empty list of {role, content} objects", "messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ChatError(f"messages[{index}] must be an object with a string 'role'", "messages")


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
    return stops


def _check_temperature(value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 2):
        raise ChatError(f"'temperature' must be a number from 0 to 2, got {value!r}", "temperature")


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
