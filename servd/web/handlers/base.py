"""What every JSON handler shares: the daemon, the web guard, auth, and errors in the wire's format.

Every HTTP error answer, whoever makes it (a route's refusal, a failed request, the guard, or
Tornado: a method a route doesn't serve, a malformed request), is written through the route's
protocol's one `ErrorShape` (servd's `{"error": {"code", "message"}}` here; v2's and OpenAI's in
their modules), with the status its ErrorCode has there, as compact JSON like every other body.
The websocket routes use the same shape and guard (webguard.refusal) for what they answer over
plain HTTP.

No route buffers a body it doesn't read: every handler here streams its body
(`stream_request_body`), so its checks (`prepare`) run as soon as the headers are in; handlers
that take no body drop what arrives. Loop thread only (Tornado handlers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from tornado.web import RequestHandler, stream_request_body

from servd.daemon import auth
from servd.errors import ErrorCode, ServdError
from servd.inputs import jsontext
from servd.web import compat
from servd.web import guard as webguard

if TYPE_CHECKING:
    from servd.daemon.daemon import Daemon

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
encode = jsontext.compact
AUTHENTICATE = 'Bearer realm="servd"'  # RFC 9110: a 401 must say how to authenticate


def error_body(code: ErrorCode, message: str) -> str:
    return encode({"error": {"code": code.word, "message": message}})


@dataclass(frozen=True)
class ErrorShape:
    """One protocol's error answers: the body it writes for an error, the status where the
    protocol's differs from servd's, and the codes its clients must not retry."""

    body: Callable[[ErrorCode, str, str | None], Any]  # (code, message, param) -> str | bytes | dict
    statuses: Mapping[ErrorCode, int] = field(default_factory=dict)
    not_retried: frozenset[ErrorCode] = frozenset()  # answered with x-should-retry: false

    def status(self, code: ErrorCode) -> int:
        return self.statuses.get(code, code.http_status)

    def headers(self, code: ErrorCode) -> dict[str, str]:
        headers = {"WWW-Authenticate": AUTHENTICATE} if code is ErrorCode.UNAUTHORIZED else {}
        if code in self.not_retried:
            headers["x-should-retry"] = "false"  # OpenAI's clients would retry any 5xx
        return headers


class FieldError(ServdError):
    """A refusal that names the request's field at fault (OpenAI's `param`)."""

    def __init__(self, code: ErrorCode, message: str, param: str | None) -> None:
        super().__init__(code, message)
        self.param = param


SERVD_ERRORS = ErrorShape(lambda code, message, param: error_body(code, message))


def error_answer(
    handler: RequestHandler,
    shape: ErrorShape,
    error: ServdError,
    *,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
    param: str | None = None,
) -> bytes:
    """Set the status and headers of `error`'s answer in `shape`; return its body, to be sent."""
    handler.set_status(status or shape.status(error.code))
    for key, value in {**shape.headers(error.code), **(headers or {})}.items():
        handler.set_header(key, value)
    handler.set_header("Content-Type", "application/json")
    handler.set_header("Cache-Control", "no-store")
    if param is None and isinstance(error, FieldError):
        param = error.param
    body = shape.body(error.code, error.message, param)
    if isinstance(body, bytes):
        return body
    return (body if isinstance(body, str) else encode(body)).encode()


def tornado_error(handler: RequestHandler, status_code: int) -> ServdError:
    """Tornado's own errors as ours, no traceback: 405 method_not_allowed (with its Allow header);
    other 4xx bad_request; 5xx (a servd bug; the log has it) endpoint_failed."""
    request = handler.request
    if status_code == 405:
        allowed = allowed_methods(type(handler))
        handler.set_header("Allow", allowed)
        message = f"{request.method} is not allowed on {request.path}; it serves {allowed}"
        return ServdError(ErrorCode.METHOD_NOT_ALLOWED, message)
    return ServdError(ErrorCode.BAD_REQUEST if status_code < 500 else ErrorCode.ENDPOINT_FAILED, compat.reason(handler))


def write_wire_error(handler: RequestHandler, status_code: int) -> None:
    """Tornado's error `status_code` in servd's shape (the websocket routes' plain-HTTP answers)."""
    handler.finish(error_answer(handler, SERVD_ERRORS, tornado_error(handler, status_code), status=status_code))


def allowed_methods(handler_class: type[RequestHandler]) -> str:
    """The methods a route serves (those its handler implements): its Allow header and preflight
    answer. Not cached: only a 405 or an OPTIONS asks."""
    return ", ".join(m for m in METHODS if compat.implements(handler_class, m.lower()))


@stream_request_body
class JSONHandler(RequestHandler):
    daemon: Daemon
    errors: ClassVar[ErrorShape] = SERVD_ERRORS  # the route's protocol's error answers
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

    def data_received(self, chunk: bytes) -> None:
        """A body on a route that takes none: dropped as it arrives."""

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
        """The caller's token; raises unauthorized when tokens are configured and it's wrong, or
        when it came in the query string: `?token=` is only for the websocket handshake (browsers
        can't set its headers), since addresses end up in proxies' and servers' logs."""
        tokens = self.daemon.tokens
        if tokens and "token" in self.request.query_arguments:
            raise ServdError(
                ErrorCode.UNAUTHORIZED,
                "?token= is accepted only on the websocket handshake; send Authorization: Bearer <token>",
            )
        token = auth.presented_token(self.request)
        if not auth.is_valid(token, tokens):
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

    def send_json(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(body if isinstance(body, (str, bytes)) else encode(body))

    def send_error_code(
        self,
        error: ServdError,
        headers: Mapping[str, str] | None = None,
        param: str | None = None,
        status: int | None = None,
    ) -> None:
        self.finish(error_answer(self, self.errors, error, status=status, headers=headers, param=param))

    def answer_with(self, build: Callable[[], Any]) -> None:
        """Check the token, then send what `build()` returns, or its ServdError."""
        try:
            self.check_auth()
            self.send_json(build())
        except ServdError as exc:
            self.send_error_code(exc)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self._allow_cross_origin()  # send_error cleared the headers prepare set
        self.send_error_code(tornado_error(self, status_code), status=status_code)


class NotFound(JSONHandler):
    def prepare(self) -> None:
        super().prepare()
        if not compat.response_finished(self):
            self.send_error_code(
                ServdError(ErrorCode.NOT_FOUND, f"no route {self.request.path} (GET /openapi.json lists the routes)")
            )
