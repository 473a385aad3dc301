"""Wire messages: parse what clients send, build what the server sends (JSON text).

Pure functions; no I/O. Server messages are built as text so that a result encoded once
(on the worker thread) is never decoded and encoded again on the loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from servd.core.events import Completed, Estimation, Failed, Partial, Progress, Queued, Started
from servd.errors import ErrorCode
from servd.inputs.jsontext import MAX_DEPTH, compact, depth_problem, dumps, loads

__all__ = [
    "MAX_DEPTH",
    "compact",
    "depth_problem",
    "dumps",
    "loads",
]  # re-exported: the JSON rules live in inputs.jsontext

MAX_ID_CHARS = 256
MAX_INT_ID = 2**63


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


def encode_id(request_id: str | int | None) -> str:
    return str(request_id) if type(request_id) is int else json.dumps(request_id)


def progress(request_id: str | int, event: Progress) -> str:
    """The websocket message for a progress event: built once per event, as text."""
    if type(event) is Partial:
        return f'{{"type":"partial","id":{encode_id(request_id)},"data":{event.data_json}}}'
    if type(event) is Started:
        return f'{{"type":"started","id":{encode_id(request_id)}}}'
    assert isinstance(event, (Queued, Estimation))
    eta = "null" if event.eta_s is None else f"{event.eta_s:.3f}"
    return (
        f'{{"type":"{event.kind}","id":{encode_id(request_id)},"rank":{event.rank},'
        f'"queue_size":{event.queue_size},"eta_s":{eta}}}'
    )


def progress_body(event: Progress) -> dict[str, Any]:
    """A progress event as a JSON-ready dict (without the id), for transports that nest it."""
    if isinstance(event, (Queued, Estimation)):
        return {"type": event.kind, "rank": event.rank, "queue_size": event.queue_size, "eta_s": event.eta_s}
    return {"type": event.kind}


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
