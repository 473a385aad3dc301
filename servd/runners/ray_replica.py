"""What runs inside a replica's actor, in one of Ray's worker processes (runners.ray starts it).

The actor imports the entrypoint and builds the model in its own process, then runs each batch
through `runners.execution.execute`, so failure isolation (bisection) and out-of-memory halving happen
here exactly as on one machine. Errors that can't be pickled go back described. A call's
"is it still wanted" is Ray's cancellation: ray.cancel on the driver, is_canceled() here.
Ray itself is imported only inside the functions that ask it something.

Threading: Ray runs the actor's methods on the actor's own thread. A streaming call (`run_stream`)
runs `execute` on a helper thread and hands its partials over a queue; the actor's thread yields
them and watches for ray.cancel (only it can see it), clearing the flag the call reads. Nothing
here runs on servd's loop.
"""

from __future__ import annotations

import os
import pickle
import queue
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from servd.runners import devices, entrypoints
from servd.runners.entrypoints import Model
from servd.runners.execution import execute
from servd.runners.seam import BatchResult, Job


class RemoteError(Exception):
    """An entrypoint's exception that could not be sent back from the replica as itself; a
    subclass named like the original (what servd's error message shows), pickled by name and text."""

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return _remote_error, (type(self).__name__, str(self))


def _remote_error(name: str, text: str) -> RemoteError:
    return type(name, (RemoteError,), {})(text)  # type: ignore[no-any-return]


class ReplicaActor:
    """The model of one replica, in its own process. Ray makes this class an actor."""

    def __init__(self, ref: str, search_dirs: list[str], device: str, options: Mapping[str, Any]) -> None:
        for directory in reversed(search_dirs):
            if directory not in sys.path:
                sys.path.insert(0, directory)
        entry = entrypoints.resolve(ref)
        placed = devices.resolve([device])[0]
        self.model = entry.instantiate(placed, options)

    def ready(self) -> tuple[int, str]:
        import ray

        return os.getpid(), ray.get_runtime_context().get_node_id()

    def run(self, inputs: list[Any], batched: bool) -> BatchResult:
        job = _job(self.model, inputs, batched, _not_cancelled)
        return _sendable(execute(job, _no_emit))

    def run_stream(self, inputs: list[Any], batched: bool) -> Iterator[tuple[int, list[str]] | BatchResult]:
        """A streaming generator: (offset, partials) items, then the BatchResult. `execute` runs
        on a helper thread; this one watches for ray.cancel (only the task's own thread can)."""
        items: queue.SimpleQueue[tuple[int, list[str]] | BatchResult] = queue.SimpleQueue()
        wanted = threading.Event()
        wanted.set()
        job = _job(self.model, inputs, batched, wanted.is_set)

        def work() -> None:
            try:
                result = execute(job, lambda offset, texts: items.put((offset, texts)))
            except BaseException as exc:  # noqa: BLE001 - the caller must hear back whatever happened
                result = BatchResult.failed(inputs, exc)
            items.put(_sendable(result))

        threading.Thread(target=work, name="servd-replica-stream", daemon=True).start()
        while True:
            try:
                item = items.get(timeout=0.05)
            except queue.Empty:
                if not _not_cancelled():
                    wanted.clear()
                continue
            yield item
            if isinstance(item, BatchResult):
                return

    def close(self) -> None:
        close = self.model.close
        self.model.close = None
        if close is not None:
            close()


def _job(model: Model, inputs: list[Any], batched: bool, is_wanted: Callable[[], bool]) -> Job:
    return Job(model=model, inputs=inputs, batched=batched, on_partial=_no_emit, on_done=_no_done, is_wanted=is_wanted)


def _no_emit(offset: int, texts: list[str]) -> None:
    return None


def _no_done(result: BatchResult) -> None:
    return None


def _not_cancelled() -> bool:
    import ray

    try:
        return not ray.get_runtime_context().is_canceled()
    except RuntimeError:  # not inside a task's own thread
        return True


def _sendable(result: BatchResult) -> BatchResult:
    """Errors that can't be pickled are sent as RemoteError with the same type name and text."""
    for outcome in result.outcomes:
        if outcome.error is None:
            continue
        outcome.error.__traceback__ = None
        try:
            pickle.dumps(outcome.error)
        except Exception:  # noqa: BLE001 - anything unpicklable is described instead
            outcome.error = described(outcome.error)
    return result


def described(exc: BaseException) -> RemoteError:
    """`exc` as a RemoteError subclass of the same name and text (what can cross processes)."""
    return _remote_error(type(exc).__name__, str(exc))
