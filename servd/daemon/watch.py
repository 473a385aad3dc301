"""Watch the config file and hand changes to the loop; the daemon decides whether to reload.

The watchdog observer watches the file's *directory*, because editors save by writing a temp
file and renaming it over the original, and Kubernetes swaps a `..data` symlink: neither
modifies the watched file in place. Any event there only schedules a debounced check on the
loop (IOLoop.add_callback is the one thread-safe call); the daemon then compares the file's
content with what it last loaded, so no-op saves don't reload.

Only events that name the config file (or, when it is a symlink, the first hop of its target,
such as Kubernetes' `..data`) count: a busy log file next to servd.yaml must neither wake the
loop per line nor keep postponing a reload. The check runs at most DEBOUNCE_S after the first
event of a burst; a burst that goes on longer is caught by the next event's check.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from tornado.ioloop import IOLoop
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

DEBOUNCE_S = 0.1


class ConfigWatcher(FileSystemEventHandler):
    """Calls `on_change` on the loop, DEBOUNCE_S after the last burst of events in the directory."""

    def __init__(self, path: Path, loop: IOLoop, on_change: Callable[[], None]) -> None:
        self.path = path
        self.loop = loop
        self.on_change = on_change
        self._timer: object | None = None
        self._observer = Observer()
        self._observer.daemon = True
        self._observer.schedule(self, str(path.parent), recursive=False)

    def start(self) -> None:
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()

    def on_any_event(self, event: FileSystemEvent) -> None:
        # watchdog's thread: decide relevance from names only, then hand off (no logging, no state)
        if event.event_type in ("opened", "closed_no_write"):
            return
        names = self._relevant_names()
        paths = (event.src_path, getattr(event, "dest_path", ""))
        if any(os.path.basename(os.fsdecode(p)) in names for p in paths if p):
            self.loop.add_callback(self._debounce)

    def _relevant_names(self) -> set[str]:
        names = {self.path.name}
        with contextlib.suppress(OSError):
            target = os.readlink(self.path)
            if not os.path.isabs(target):
                names.add(Path(target).parts[0])
        return names

    def _debounce(self) -> None:
        if self._timer is None:
            self._timer = self.loop.call_later(DEBOUNCE_S, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.on_change()
