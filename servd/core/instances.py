"""An endpoint's model instances, by generation: one per device, each with `concurrency` slots.

Loop thread only. A reload that changes the model serves new batches from a new generation
while the old one's running calls finish; each retired instance is closed (its `close()` on a
worker thread) once it has nothing running. On a cluster (runners.ray) an instance is a
replica, and only a reachable one takes batches: a lost or restarting replica has no slots.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any

from tornado.ioloop import IOLoop

from servd.runners.entrypoints import Model


@dataclass(eq=False)
class Instance:
    """One model on one device, with its own `concurrency` slots."""

    model: Model
    running: int = 0
    retired: bool = False


class Instances:
    def __init__(self, endpoint: str, loop: IOLoop, log: Any) -> None:
        self.endpoint = endpoint
        self.loop = loop
        self.log = log
        self.current: list[Instance] = []

    def live(self) -> int:
        return sum(1 for i in self.current if not i.retired and i.model.reachable)

    def devices(self) -> list[str]:
        return [i.model.device for i in self.current if not i.retired]

    def free(self, concurrency: int) -> Instance | None:
        """The least busy live instance with a free slot (first listed wins a tie), or None."""
        best: Instance | None = None
        for instance in self.current:
            if (
                not instance.retired
                and instance.model.reachable
                and instance.running < concurrency
                and (best is None or instance.running < best.running)
            ):
                best = instance
        return best

    def serve(self, models: list[Model]) -> None:
        """A new generation: later batches go to `models`; idle old instances close now, busy ones later.

        A model served already (a cluster replica kept when only the count of replicas changed)
        keeps its instance, with the calls it runs."""
        old = self.current
        kept = {id(i.model): i for i in old}
        self.current = [kept.pop(id(model)) if id(model) in kept else Instance(model) for model in models]
        for instance in kept.values():
            instance.retired = True
            if instance.running == 0:
                self.close(instance)

    def call_ended(self, instance: Instance) -> None:
        instance.running -= 1
        if instance.retired and instance.running == 0:
            self.close(instance)

    def close_all(self) -> list[asyncio.Future[Any]]:
        """Retire and close every instance; returns the close() calls still running."""
        closing = []
        for instance in self.current:
            instance.retired = True
            future = self.close(instance)
            if future is not None:
                closing.append(future)
        return closing

    def close(self, instance: Instance) -> asyncio.Future[Any] | None:
        """Run the model's close() on a worker thread (it may free GPU memory slowly); once only."""
        close = instance.model.close
        if close is None:
            return None
        instance.model.close = None
        future = self.loop.run_in_executor(None, close)
        future.add_done_callback(functools.partial(self._closed, instance.model.device))
        return future

    def _closed(self, device: str, future: asyncio.Future[Any]) -> None:
        exc = future.exception()
        if exc is not None:
            self.log.error("model close() raised", endpoint=self.endpoint, device=device, exc_info=exc)
