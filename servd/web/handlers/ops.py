"""Operator endpoints: /v1/endpoints, /v1/status, /healthz, /readyz, /metrics.

/healthz and /readyz stay open without a token, and to any Host name, so that probes work; the
rest need one when tokens are configured, since they show the config.
"""

from __future__ import annotations

from servd.errors import ServdError
from servd.web import compat
from servd.web.handlers.base import JSONHandler
from servd.web.snapshot import endpoint_snapshot


class TokenRequired(JSONHandler):
    """Refuses before the handler runs when tokens are configured and the caller has none."""

    def prepare(self) -> None:
        super().prepare()
        if compat.response_finished(self):
            return
        try:
            self.check_auth()
        except ServdError as exc:
            self.send_error_code(exc)


class Endpoints(TokenRequired):
    def get(self) -> None:
        self.send_json({"endpoints": [endpoint_snapshot(e) for e in self.daemon.endpoints.values()]})


class Status(TokenRequired):
    def get(self) -> None:
        self.send_json(self.daemon.status())


class Health(JSONHandler):
    check_host = False  # probes name the pod's address; the answer tells a page nothing

    def get(self) -> None:
        self.send_json({"status": "alive"})


class Ready(JSONHandler):
    check_host = False

    def get(self) -> None:
        daemon = self.daemon
        if daemon.shutting_down:
            return self.send_json({"status": "draining"}, 503)
        if not daemon.ready:
            return self.send_json({"status": "loading"}, 503)
        self.send_json({"status": "ready"})


class MetricsText(TokenRequired):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.daemon.metrics.render())
