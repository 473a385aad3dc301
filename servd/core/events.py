"""What the core tells a transport about a request: typed events, encoded by each transport once.

Pure values; no I/O. The core (endpoint.py) emits a `Progress` event while a request waits and
runs, and exactly one `Terminal` when it ends; a websocket turns them into servd's JSON messages
(protocols.ws_messages), HTTP into SSE events, the OpenAI layer into chunks, v2 into one body.
No transport's wire format is built in the core, and no transport parses another's text.

Results stay encoded as they arrived from the worker thread (`data_json`, or a transport's own
`encoded` reply built off the loop), so the loop never decodes and re-encodes a model's output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from servd.errors import ErrorCode


@dataclass(slots=True, frozen=True)
class Queued:
    """Admitted and waiting: its place in line (0 = next) and the predicted wait."""

    rank: int
    queue_size: int
    eta_s: float | None
    kind: ClassVar[str] = "queued"


@dataclass(slots=True, frozen=True)
class Estimation(Queued):
    """A waiting request's rank or ETA changed (sent at most once per broadcast interval)."""

    kind: ClassVar[str] = "estimation"


@dataclass(slots=True, frozen=True)
class Started:
    """Its call began (or it was lined up behind the running call: see core.lines)."""

    kind: ClassVar[str] = "started"


STARTED = Started()


@dataclass(slots=True, frozen=True)
class Partial:
    """One value a generator yielded, JSON-encoded on the worker thread."""

    data_json: str
    kind: ClassVar[str] = "partial"


Progress = Queued | Estimation | Started | Partial


@dataclass(slots=True, frozen=True)
class Completed:
    """A result: `data_json` is the entrypoint's return value, already JSON-encoded off the loop.

    A tensor request whose transport sends something else (a v2 body, binary frames) gets it
    encoded off the loop too, as `encoded` (its `data_json` is then "null")."""

    data_json: str
    queue_s: float
    run_s: float
    batch_size: int
    encoded: Any = None

    @property
    def outcome(self) -> str:
        return "completed"


@dataclass(slots=True, frozen=True)
class Failed:
    code: ErrorCode
    message: str

    @property
    def outcome(self) -> str:
        return self.code.word


Terminal = Completed | Failed
