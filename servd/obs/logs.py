"""structlog set-up: readable console lines on a TTY, JSON lines otherwise.

One event per request ("request") and per reload ("reload"); keys, not f-strings. Levels are
filtered before any processor runs, so a disabled request event costs one method call.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
import structlog.tracebacks

from servd.config.spec import LogSpec

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(spec: LogSpec, stream: TextIO | None = None) -> None:
    """(Re)configure structlog; safe to call again on reload to change the level live."""
    out = stream or sys.stderr
    as_json = spec.format == "json" or (spec.format == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty(), exception_formatter=structlog.dev.plain_traceback)
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if as_json:
        # frames, not their local variables: those hold clients' data, which stays out of log files
        transformer = structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        processors.append(structlog.processors.ExceptionRenderer(transformer))
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[spec.level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def get_logger(**initial: Any) -> Any:
    """A concrete logger built from the current configuration (rebuild it after configure())."""
    return structlog.get_logger("servd").bind(**initial)
