"""What every JSON handler shares: the daemon, the web guard, auth, and errors in the wire's format.

Every HTTP error answer, whoever makes it (a route's refusal, the guard, or Tornado: a method a
route doesn't serve, a malformed request), is `{"error": {"code", "message"}}` with the status
of its ErrorCode, as compact JSON like every other body. The websocket routes use the same
functions (`error_body`, `write_wire_error`) and guard (webguard.refusal) for what they answer
over plain HTTP.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from tornado.web import RequestHandler, stream_request_body

from servd.daemon import auth
from servd.errors import ErrorCode, ServdError
from servd.protocols import ws_messages as protocol
from servd.web import compat
from servd.web import guard as webguard

if TYPE_CHECKING:
    from servd.daemon.daemon import Daemon

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
encode = protocol.compact


def error_body(code: ErrorCode, message: str) -> str:
    return encode({"error": {"code": code.word, "message": message}})


def allowed_methods(handler_class: type[RequestHandler]) -> str:
    """The methods a route serves (those its handler implements): its Allow header and preflight
    answer. Not cached: only a 405 or an OPTIONS asks."""
    return ", ".join(m for m in METHODS if compat.implements(handler_class, m.lower()))


def write_wire_error(handler: RequestHandler, status_code: int) -> None:
    """Tornado's own errors in our shape, no traceback: 405 method_not_allowed with its Allow
    header; other 4xx bad_request; 5xx (a servd bug; the log has it) endpoint_failed."""
    request = handler.request
    if status_code == 405:
        allowed = allowed_methods(type(handler))
        handler.set_header("Allow", allowed)
        code = ErrorCode.METHOD_NOT_ALLOWED
        message = f"{request.method} is not allowed on {request.path}; it serves {allowed}"
    else:
        code = ErrorCode.BAD_REQUEST if status_code < 500 else ErrorCode.ENDPOINT_FAILED
        message = compat.reason(handler)
    handler.set_header("Content-Type", "application/json")
    handler.set_header("Cache-Control", "no-store")
    handler.finish(error_body(code, message))


class JSONHandler(RequestHandler):
    daemon: Daemon
    # Probes (/healthz, /readyz) turn the Host check off: kubelet sends the pod's address as Host.
    check_host = True
    # Access-Control-Allow-Origin for an allowed request that names its Origin; None otherwise.
    cors_origin: str | None = None

    def initialize(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")

    def prepare(self) -> None:
        """The web guard, before any route's own checks; a subclass calls it first and stops if
        it answered (compat.response_finished): a refused Host or Origin, or a CORS preflight."""
        headers = self.request.headers
        server = self.daemon.spec.server
        origin = headers.get("Origin")
        refused = webguard.refusal(server, headers.get("Host"), origin, check_host=self.check_host)
        if refused is not None:
            self.daemon.note_rejected(None, refused)
            self.send_error_code(refused)
            return
        if origin is None:
            return
        self.cors_origin = webguard.allow_origin(origin, server.allowed_origins)
        self._allow_cross_origin()
        if self.request.method == "OPTIONS" and "Access-Control-Request-Method" in self.request.headers:
            self.set_header("Access-Control-Allow-Methods", allowed_methods(type(self)))
            self.set_header("Access-Control-Allow-Headers", webguard.ALLOW_HEADERS)
            self.set_header("Access-Control-Max-Age", str(webguard.MAX_AGE_S))
            self.set_status(204)
            self.finish()

    def _allow_cross_origin(self) -> None:
        """Let the calling page read this answer (browsers hide it otherwise)."""
        if self.cors_origin is None:
            return
        self.set_header("Access-Control-Allow-Origin", self.cors_origin)
        self.set_header("Access-Control-Expose-Headers", webguard.EXPOSE_HEADERS)
        if self.cors_origin != "*":
            self.set_header("Vary", "Origin")

    def options(self, *args: Any, **kwargs: Any) -> None:
        """A plain OPTIONS (not a CORS preflight, which prepare answers): the route's methods."""
        self.set_header("Allow", allowed_methods(type(self)))
        self.set_status(204)

    def check_auth(self) -> bytes | None:
        """The caller's token; raises unauthorized when tokens are configured and it's wrong."""
        token = auth.presented_token(self.request)
        if not auth.is_valid(token, self.daemon.tokens):
            raise ServdError(ErrorCode.UNAUTHORIZED, "a valid bearer token is required (Authorization: Bearer <token>)")
        return token

    def note_refusal(self, name: str | None, error: ServdError) -> dict[str, str]:
        """Count a refused request (against endpoint `name`, when known); the headers its answer
        carries: a queue_full one says when to come back (Retry-After: a new request's ETA, at
        least 1 s; clients wait this long)."""
        self.daemon.note_rejected(name, error)
        if error.code is not ErrorCode.QUEUE_FULL or name not in self.daemon.endpoints:
            return {}
        eta = self.daemon.endpoints[name].eta_for_new()
        return {"Retry-After": str(max(1, math.ceil(eta or 1)))}

    def start_event_stream(self) -> None:
        """The 200 and SSE headers, once: at admission or with the first event."""
        if compat.response_started(self):
            return
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("X-Accel-Buffering", "no")  # nginx: don't buffer the stream
        self.flush()

    def send_json(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(body if isinstance(body, (str, bytes)) else encode(body))

    def send_error_code(self, error: ServdError, headers: dict[str, str] | None = None) -> None:
        if error.code is ErrorCode.UNAUTHORIZED:
            self.set_header("WWW-Authenticate", 'Bearer realm="servd"')
        for key, value in (headers or {}).items():
            self.set_header(key, value)
        self.send_json(error_body(error.code, error.message), error.code.http_status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self._allow_cross_origin()  # send_error cleared the headers prepare set
        write_wire_error(self, status_code)


@stream_request_body
class LimitedBody(JSONHandler):
    """A POST whose body is streamed in and held to server.max_message_bytes: one over it by its
    Content-Length is refused before it is read; a chunked one is dropped as it comes and refused
    (`too_large_error()`) when it has ended. Subclasses answer refusals in `_refuse`."""

    def initialize(self, daemon: Daemon) -> None:
        super().initialize(daemon)
        self.body = bytearray()
        self.too_large = False

    def prepare(self) -> None:
        super().prepare()
        if compat.response_finished(self) or self.request.method != "POST":
            return
        declared = self.request.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > self.daemon.spec.server.max_message_bytes:
            self._refuse(self.too_large_error(f"{declared} bytes"))

    def data_received(self, chunk: bytes) -> None:
        if self.too_large or self.request.method != "POST":
            return
        self.body += chunk
        if len(self.body) > self.daemon.spec.server.max_message_bytes:
            self.too_large, self.body = True, bytearray()

    def too_large_error(self, size: str | None = None) -> ServdError:
        limit = self.daemon.spec.server.max_message_bytes
        return ServdError(
            ErrorCode.TOO_LARGE, f"body is {size or f'over {limit} bytes'}; server.max_message_bytes={limit}"
        )

    def _refuse(self, error: ServdError) -> None:
        raise NotImplementedError


class NotFound(JSONHandler):
    def prepare(self) -> None:
        super().prepare()
        if not compat.response_finished(self):
            self.send_error_code(
                ServdError(ErrorCode.NOT_FOUND, f"no route {self.request.path} (see the README's API)")
            )
