"""What Ray writes in servd's own process, made into servd's log events (cluster.engine: ray).

Under `log.format: json` every line servd's process writes must be one JSON object; as a Ray
driver it wrote plain text too (issue 24). Each writer, found line by line, and what is done:

- Ray's Python loggers (`ray.*`: "SIGTERM handler is not set because current thread is not the
  main thread", the token notice) wrote through Python's last-resort handler, plain text on
  stderr (`ray.init(configure_logging=False)` leaves the `ray` logger without a handler).
  `python_logs_captured` routes them through servd's log: each record becomes a servd event
  (event = the message, `logger` = its name), rendered as servd renders everything else.
- The replicas' stdout and stderr, which Ray forwards to the driver (`log_to_driver`) and prints
  with a `(ReplicaActor pid=…)` prefix and ANSI colours, raylet notes among them:
  `forward_output` swaps Ray's printer for one event per line (`cluster output`, with pid,
  actor, node address and stream; the colours stripped).
- Ray's C++ failure-signal handler (absl's), which `ray.init` installs in this process, took
  SIGTERM too: it wrote a stack dump twice (raw to fd 2, then through Ray's own log) before
  passing the signal on to servd's drain, so a clean stop looked like a crash.
  `reclaim_sigterm` puts servd's handler back for SIGTERM only; crashes (SIGSEGV, SIGABRT, …)
  keep Ray's dump, which is what it is for.

Threading: `python_logs_captured` and `forward_output` run on the thread that connects (around and
after `ray.init`); Ray calls the handlers they install on its own threads, and structlog's
printer takes a lock per write. `reclaim_sigterm` must run on the main thread (the loop's), the
only one where Python sets signal handlers. Uses Ray's `WorkerStandardStreamDispatcher`, the
private hook its own printer is registered with; if Ray moves it, the output keeps Ray's printer.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import threading
from collections.abc import Iterator
from typing import Any

from servd.obs import logs

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
PRINTER = "ray_print_logs"  # the name Ray registers its printer under (ray._private.worker.connect)
# Ray notes that servd's SIGTERM is not its own: servd means it (its drain), so this is not news
NOT_NEWS = ("SIGTERM handler is not set because current thread is not the main thread",)


class ToServdLog(logging.Handler):
    """A stdlib logger's records as servd's events, through servd's current log configuration."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            level = logging.DEBUG if message.startswith(NOT_NEWS) else record.levelno
            extra = {"exc_info": record.exc_info} if record.exc_info else {}
            logs.get_logger().log(level, message, logger=record.name, **extra)
        except Exception:  # noqa: BLE001 - logging must never raise into Ray's threads
            self.handleError(record)


@contextlib.contextmanager
def python_logs_captured() -> Iterator[None]:
    """Ray's Python loggers write through servd's log: around `ray.init` and from then on.

    `ray.init(configure_logging=False)` clears the `ray` logger's handlers, so what it logs while
    connecting (the SIGTERM note, the token notice) finds none and goes to Python's last-resort
    handler, plain text on stderr; during the call that handler is servd's too. After it, the
    `ray` logger gets servd's handler for good.
    """
    handler = ToServdLog()
    previous, logging.lastResort = logging.lastResort, handler
    try:
        yield
    finally:
        logging.lastResort = previous
        ray_logger = logging.getLogger("ray")
        ray_logger.handlers = [handler]
        ray_logger.propagate = False


def forward_output() -> None:
    """The replicas' forwarded output as one servd event per line (call after `ray.init`)."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    dispatcher.remove_handler(PRINTER)
    dispatcher.add_handler(PRINTER, log_output)


def log_output(data: dict[str, Any]) -> None:
    """One batch of forwarded lines (Ray's dict: pid, ip, actor_name, task_name, is_err, lines)."""
    log = logs.get_logger()
    say = log.warning if data.get("is_err") else log.info
    where = {"pid": data.get("pid"), "actor": data.get("actor_name") or data.get("task_name"), "node": data.get("ip")}
    stream = "stderr" if data.get("is_err") else "stdout"
    for line in data.get("lines", ()):
        text = ANSI.sub("", str(line)).rstrip()
        if text:
            say("cluster output", line=text, stream=stream, **{k: v for k, v in where.items() if v})


def reclaim_sigterm() -> None:
    """Give SIGTERM back to the handler Python holds for it (servd's drain), over Ray's C++ one."""
    if threading.current_thread() is not threading.main_thread():
        return
    handler = signal.getsignal(signal.SIGTERM)
    if handler is not None:
        signal.signal(signal.SIGTERM, handler)
