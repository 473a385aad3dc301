"""Operator endpoints: /v1/endpoints, /v1/status, /healthz, /readyz, /metrics.

/healthz and /readyz stay open without a token so that probes work; the rest need one when
tokens are configured, since they show the config.
"""

from __future__ import annotations

from servd.errors import ServdError
from servd.handlers.base import JSONHandler


class Endpoints(JSONHandler):
    def get(self) -> None:
        try:
            self.check_auth()
        except ServdError as exc:
            return self.send_error_code(exc)
        self.send_json({"endpoints": [e.snapshot() for e in self.daemon.endpoints.values()]})


class Status(JSONHandler):
    def get(self) -> None:
        try:
            self.check_auth()
        except ServdError as exc:
            return self.send_error_code(exc)
        self.send_json(self.daemon.status())


class Health(JSONHandler):
    def get(self) -> None:
        self.send_json({"status": "alive"})


class Ready(JSONHandler):
    def get(self) -> None:
        daemon = self.daemon
        if daemon.shutting_down:
            return self.send_json({"status": "draining"}, 503)
        if not daemon.ready:
            return self.send_json({"status": "loading"}, 503)
        self.send_json({"status": "ready"})


class MetricsText(JSONHandler):
    def get(self) -> None:
        try:
            self.check_auth()
        except ServdError as exc:
            return self.send_error_code(exc)
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.daemon.metrics.render())
