"""The Runner seam: what the core hands a runner, what it hears back, and what a runner can do.

The core (core.endpoint) never asks which runner it has: it reads `Runner.capabilities` and calls
the protocol. Runners today: the local thread pool (runners.pool) and Ray replicas (runners.ray);
the composition root (daemon) is the only place that picks one by type. What the seam carries:

- loading: `prepare` (join a cluster, once), `load` (build an endpoint's models for a spec),
- readiness and description: each model's `reachable`, `describe` (replica states, as a type),
- running: `run`, `abandon`, `resize`, `shutdown`, and with `lines_up` a `Liner` (`liner()`)
  that chains short calls behind a running one (core.endpoint's lines),
- capabilities: what the core may ask of it (lining up, stepping sequences, remote replicas).

Threading: every method is called on the loop thread; a Job's `on_partial`/`on_done` are called
back on the loop thread; `is_wanted` is read from whichever thread runs the call.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from servd.inputs import declared
from servd.runners.entrypoints import Entrypoint, Model

if TYPE_CHECKING:
    from servd.config.spec import EndpointSpec


class BatchContractError(Exception):
    """A batched entrypoint broke its contract (not a list, wrong length): no input is to blame."""


@dataclass(slots=True)
class Outcome:
    """One input's result: JSON text, or the exception that ended it.

    A result also says which call produced it: that call's length and duration. They differ from
    the job's when failure isolation split it (a request that completes in a retried half of 2
    ran in a call of 2, for that call's time).
    """

    data_json: str | None = None
    error: BaseException | None = None
    run_s: float = 0.0
    batch_size: int = 0
    payload: Any = None  # a tensor call's outputs; after execute, what its reply made of them if not JSON


@dataclass(slots=True)
class BatchResult:
    outcomes: list[Outcome]
    run_s: float
    oom_sizes: list[int] = field(default_factory=list)
    lost: bool = False  # the slot itself was lost (a cluster replica died): the batch goes back to the queue
    began_at: float = 0.0  # when the call began (time.monotonic(), this machine only); 0: not known

    @classmethod
    def failed(cls, inputs: list[Any], error: BaseException) -> BatchResult:
        """Every input ends with `error`: the call could not run, or could not report."""
        return cls([Outcome(error=error) for _ in inputs], 0.0)


@dataclass(slots=True, eq=False)
class Job:
    model: Model
    inputs: list[Any]  # an `Unchecked` one is checked against its input_schema first (validation.py)
    batched: bool
    on_partial: Callable[[int, list[str]], None]  # (offset, JSON texts); called on the loop
    on_done: Callable[[BatchResult], None]  # called on the loop
    is_wanted: Callable[[], bool]  # read from the worker: False once every request ended
    tensors: declared.Layout | None = None  # declared tensors: inputs are TensorInputs, stacked on a batched endpoint
    finished: bool = False  # written under the pool's lock
    abandoned: bool = False
    pool: Any = None
    then: Job | None = None  # lined up behind this one: runs next on the same thread (written under the pool's lock)
    backlog: PartialBacklog | None = None  # partials on their way to the loop (set by the worker that emits)


class PartialBacklog:
    """Partial results a worker emitted that the loop has not handed on yet, in bytes: bounded.

    A generator can yield far faster than a loop (busy, or feeding a slow reader) hands values on;
    without a bound the values pile up between the two threads, uncounted, whatever the client's
    own buffer cap says (#25). So a worker adds what it emits and, past LIMIT, waits before pulling
    the next value until the loop has caught up, or until no one wants the call any more.
    Worker thread: `add`, `wait_for_room`. Loop thread: `delivered`.
    """

    LIMIT = 1 << 20  # per call: the loop hands a partial on within microseconds when it keeps up

    __slots__ = ("_bytes", "_room")

    def __init__(self) -> None:
        self._bytes = 0
        self._room = threading.Condition(threading.Lock())

    def add(self, size: int) -> None:
        with self._room:
            self._bytes += size

    def delivered(self, size: int) -> None:
        with self._room:
            self._bytes -= size
            if self._bytes <= self.LIMIT:
                self._room.notify_all()

    def wait_for_room(self, is_wanted: Callable[[], bool], poll_s: float = 0.05) -> None:
        """Block while over LIMIT and the call is still wanted (re-read every `poll_s`)."""
        with self._room:
            while self._bytes > self.LIMIT and is_wanted():
                self._room.wait(poll_s)


class CancelledBeforeStart(Exception):
    """Every request of the job ended before its call began, so the call was skipped."""


class NotJSON(TypeError):
    """The entrypoint returned something json.dumps can't encode (a tensor, a set, NaN)."""


class NotEncodable(Exception):
    """A JSON value that servd's encoder could not write (nested deeper than it recurses): servd's
    limit, not the entrypoint's fault, and said so to the client and in the log."""


class Runner(Protocol):
    """Where an endpoint's calls run. Loop thread only."""

    @property
    def capabilities(self) -> Capabilities: ...

    async def prepare(self, search_path: list[str]) -> None:
        """Join what the runner runs on (a cluster) before any model loads; nothing for the pool."""

    async def load(
        self, spec: EndpointSpec, entry: Entrypoint, placed: tuple[str, ...], running: Sequence[Model]
    ) -> list[Model]:
        """The endpoint's models for `spec`: one per placed device, or its replicas (keeping `running`
        ones that match). Slow work (constructors, actors starting) happens off the loop."""

    def describe(self, spec: EndpointSpec, models: Sequence[Model]) -> Replicas | None:
        """What the endpoint's models are, for /v1/endpoints and metrics (None: nothing beyond devices)."""

    def liner(self) -> Liner | None:
        """The runner's way to line calls up (capabilities.lines_up), else None."""

    def run(self, job: Job) -> None:
        """Start `job` on some slot; `job.on_done` is called exactly once, on the loop."""

    def abandon(self, job: Job) -> None:
        """Every request of `job` ended while its call still runs: its thread stops counting."""

    def resize(self, max_threads: int) -> None: ...

    def shutdown(self) -> None: ...


class Liner(Protocol):
    """Chains a short call behind a running one on the same worker (runners.pool). Loop thread only."""

    def run_after(self, job: Job, before: Job) -> None:
        """Run `job` right after `before`, on its thread; its result waits for `collect` or a wake-up."""

    def collect(self) -> None:
        """Take the results lined-up calls reported without waking the loop."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the core may ask of a runner; the core branches on these, never on a runner's type."""

    lines_up: bool = False  # liner() chains short calls behind a running one
    steps: bool = False  # runs sequences a step at a time (continuous batching)
    replicas: bool = False  # models are remote replicas with states (describe() reports them)


class ReplicaState(enum.Enum):
    """A remote replica's life: only a LIVE one takes calls."""

    STARTING = "starting"
    LIVE = "live"
    RESTARTING = "restarting"
    DEAD = "dead"

    @property
    def pending(self) -> bool:
        return self in (ReplicaState.STARTING, ReplicaState.RESTARTING)


@dataclass(frozen=True, slots=True)
class ReplicaView:
    state: ReplicaState
    node: str | None
    error: str | None


@dataclass(frozen=True, slots=True)
class Replicas:
    """An endpoint's replicas as a runner describes them: wanted, and each one's state."""

    wanted: int
    each: tuple[ReplicaView, ...]

    def count(self, state: ReplicaState) -> int:
        return sum(1 for r in self.each if r.state is state)

    @property
    def pending(self) -> int:
        return sum(1 for r in self.each if r.state.pending)

    def as_json(self) -> dict[str, Any]:
        return {
            "wanted": self.wanted,
            "live": self.count(ReplicaState.LIVE),
            "pending": self.pending,
            "dead": self.count(ReplicaState.DEAD),
            "each": [{"state": r.state.value, "node": r.node, "error": r.error} for r in self.each],
        }
