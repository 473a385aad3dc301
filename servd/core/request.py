"""The request record, and the one place a request ends: `Request.finish` runs once.

Loop thread only. A request is admitted into exactly one endpoint's queue and ends with exactly
one Terminal, which is handed to its Sink (a websocket connection, an HTTP response or an SSE
stream). Every later attempt to end it (a late batch result, a timeout racing a cancel) is a
no-op, which is what makes "exactly one terminal message" hold.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

from servd.core.events import Progress, Terminal


class State(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


class Sink(Protocol):
    """Where a request's messages go. Called on the loop thread; must not block."""

    def send(self, request: Request, event: Progress) -> None:
        """A progress event (queued, estimation, started, partial); each transport encodes it its own way."""

    def end(self, request: Request, terminal: Terminal) -> None:
        """The request's one terminal outcome."""


class Owner(Protocol):
    """The endpoint that admitted a request: the one place that can cancel it."""

    def cancel(self, request: Request, message: str) -> None:
        """End a queued or running request with `cancelled`."""


@dataclass(slots=True, eq=False)
class Request:
    """One client request from admission to its terminal message."""

    id: str | int
    client: str
    data: Any
    sink: Sink
    progress: bool = True
    size: int = 0  # characters the client sent for it; large data is checked off the loop (validation.py)
    priority: int = 0  # as asked (0 = the endpoint's default); once admitted, the level it waits at
    deadline_s: float | None = None  # the client's own deadline, tighter than queue.timeout_s
    highest_priority: int = 1  # the highest level (smallest number) the client's token may ask for
    admitted_at: float = 0.0
    eta_s: float | None = None  # the ETA given at admission, to measure the estimator by
    deadline: float | None = None
    state: State = State.QUEUED
    started_at: float = 0.0
    last_rank: int = -1
    reruns: int = 0  # times it went back to the queue because the replica running it was lost
    terminal: Terminal | None = None
    owner: Owner | None = field(default=None, repr=False)  # set on admission
    timer: Any = field(default=None, repr=False)  # loop handle of the timeout

    @property
    def done(self) -> bool:
        return self.state is State.DONE

    def finish(self, terminal: Terminal) -> bool:
        """End the request with `terminal`; False (and nothing sent) if it had already ended."""
        if self.state is State.DONE:
            return False
        self.state = State.DONE
        self.terminal = terminal
        self.data = None  # inputs can be large; a finished request keeps none
        self.sink.end(self, terminal)
        return True
