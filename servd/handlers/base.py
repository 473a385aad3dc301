"""What every JSON handler shares: the daemon, auth, and errors in the wire's format."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tornado.web import RequestHandler

from servd import auth
from servd.errors import ErrorCode, ServdError

if TYPE_CHECKING:
    from servd.daemon import Daemon


class JSONHandler(RequestHandler):
    daemon: Daemon

    def initialize(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")

    def check_auth(self) -> bytes | None:
        """The caller's token; raises unauthorized when tokens are configured and it's wrong."""
        token = auth.presented_token(self.request)
        if not auth.is_valid(token, self.daemon.tokens):
            raise ServdError(ErrorCode.UNAUTHORIZED, "a valid bearer token is required (Authorization: Bearer <token>)")
        return token

    def send_json(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(body if isinstance(body, (str, bytes)) else json.dumps(body))

    def send_error_code(self, error: ServdError, headers: dict[str, str] | None = None) -> None:
        if error.code is ErrorCode.UNAUTHORIZED:
            self.set_header("WWW-Authenticate", 'Bearer realm="servd"')
        for key, value in (headers or {}).items():
            self.set_header(key, value)
        self.send_json({"error": {"code": error.code.word, "message": error.message}}, error.code.http_status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Tornado's own errors (bad method, malformed request) in our JSON shape, no traceback."""
        code = ErrorCode.BAD_REQUEST if status_code < 500 else ErrorCode.ENDPOINT_FAILED
        self.finish(json.dumps({"error": {"code": code.word, "message": self._reason}}))


class NotFound(JSONHandler):
    def prepare(self) -> None:
        self.send_json({"error": {"code": "not_found", "message": f"no route {self.request.path}"}}, 404)
