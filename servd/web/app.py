"""make_app(daemon) -> the tornado Application: routes, with the daemon injected into handlers."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from tornado.web import Application, RequestHandler

from servd.web.handlers import console, events, openai, ops, v2
from servd.web.handlers.base import NotFound
from servd.web.handlers.http import EndpointHTTP
from servd.web.handlers.ws import QueueSocket
from servd.web.live import LiveFeed

if TYPE_CHECKING:
    from servd.daemon.daemon import Daemon

NAME = r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]*)"
MODEL = NAME + r"(?:/versions/(?P<version>[^/]+))?"  # v2: an endpoint is a model of version 1


def make_app(daemon: Daemon) -> Application:
    """Routes, with the daemon injected into each handler; listener settings come from `listener.WebFront`."""
    deps = {"daemon": daemon}
    feed = LiveFeed(daemon)  # samples the endpoints from now on, for the console's charts
    return Application(
        [
            (r"/", console.ConsolePage, {**deps, "feed": feed}),  # the page carries its first snapshot
            (r"/console/(?P<file>[A-Za-z0-9_.-]+)", console.ConsolePage, deps),
            (r"/openapi.json", console.OpenAPIDocument, deps),
            (r"/v1/events", events.Events, {**deps, "feed": feed}),
            (r"/v1/ws", QueueSocket, deps),
            (rf"/v1/endpoints/{NAME}/ws", QueueSocket, deps),
            (rf"/v1/endpoints/{NAME}", EndpointHTTP, deps),
            (r"/v1/endpoints/?", ops.Endpoints, deps),
            (r"/v1/status", ops.Status, deps),
            (r"/v1/chat/completions", openai.ChatCompletions, deps),
            (r"/v1/models", openai.Models, deps),
            (r"/v1/models/(?P<model>.+)", openai.Models, deps),
            (r"/v2/?", v2.ServerMetadata, deps),
            (r"/v2/health/live", v2.Live, deps),
            (r"/v2/health/ready", v2.Ready, deps),
            (r"/v2/models/stats", v2.Statistics, deps),
            (rf"/v2/models/{MODEL}/stats", v2.Statistics, deps),
            (rf"/v2/models/{MODEL}/ready", v2.ModelReady, deps),
            (rf"/v2/models/{MODEL}/config", v2.ModelConfig, deps),
            (rf"/v2/models/{MODEL}/infer", v2.Infer, deps),
            (rf"/v2/models/{MODEL}", v2.ModelMetadata, deps),
            (r"/healthz", ops.Health, deps),
            (r"/readyz", ops.Ready, deps),
            (r"/metrics", ops.MetricsText, deps),
        ],
        default_handler_class=NotFound,
        default_handler_args=deps,
        compress_response=False,
        log_function=functools.partial(_access_log, daemon),
        servd_note_rejected=daemon.note_rejected,  # the listener counts connections it refuses
    )


def _access_log(daemon: Daemon, handler: RequestHandler) -> None:
    """Tornado's access line as a structlog event: debug for success, warning for 5xx.

    Request outcomes are already logged once each as "request" events, so the HTTP line is
    detail, not news.
    """
    status = handler.get_status()
    log = daemon.log.warning if status >= 500 else daemon.log.debug
    log("http", method=handler.request.method, path=handler.request.path, status=status,
        ms=round(1000 * handler.request.request_time(), 3))  # fmt: skip
