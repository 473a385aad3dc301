"""The web console's pages (GET /, /console/{file}) and the API document (GET /openapi.json).

The pages are static files shipped in the package (servd/web/console/), read once and served from
memory with an ETag; the deployment's data reaches them only through the token-checked API
(/v1/events, /v1/endpoints, /openapi.json, the websocket), so the pages themselves need no token
and show nothing of the deployment. index.html learns one fact at serving time: whether tokens
are configured (`data-auth`), so the console asks for one before its first call instead of
drawing a refused request. Every page carries a strict Content-Security-Policy: scripts and
styles from this origin only (no inline script), no framing by other sites, connections to this
origin only.
"""

from __future__ import annotations

import functools
import mimetypes
from dataclasses import dataclass
from importlib import resources

from servd import __version__
from servd.errors import ErrorCode, ServdError
from servd.protocols.openapi import document
from servd.web.handlers.base import JSONHandler
from servd.web.handlers.ops import TokenRequired

CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",  # results that are data: URLs of images
        "connect-src 'self'",  # fetch, the event stream and the websocket, to this origin only
        "base-uri 'none'",
        "form-action 'none'",  # forms are handled by script; none may navigate (a token in a URL)
        "frame-ancestors 'none'",
    )
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache",  # revalidate (ETag): a new servd version serves new files at once
}
TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".html": "text/html; charset=utf-8", ".svg": "image/svg+xml"}  # fmt: skip
INDEX = "index.html"
AUTH_MARK = "{{auth}}"


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str


@functools.lru_cache(maxsize=1)
def assets() -> dict[str, Asset]:
    """The console's files by name, read once from the package (servd/web/console/, package data)."""
    folder = resources.files("servd.web").joinpath("console")
    found = {}
    for item in folder.iterdir():
        if item.is_file() and not item.name.startswith("."):
            suffix = "." + item.name.rpartition(".")[2]
            kind = TYPES.get(suffix) or mimetypes.guess_type(item.name)[0] or "application/octet-stream"
            found[item.name] = Asset(item.read_bytes(), kind)
    return found


@functools.lru_cache(maxsize=2)
def index_page(tokens: bool) -> bytes:
    return assets()[INDEX].body.replace(AUTH_MARK.encode(), b"token" if tokens else b"none")


class ConsolePage(JSONHandler):
    """GET / (index.html) and GET /console/{file}; 404 not_found when server.console is false."""

    def set_default_headers(self) -> None:
        for key, value in PAGE_HEADERS.items():
            self.set_header(key, value)

    def get(self, file: str | None = None) -> None:
        name = file or INDEX
        asset = assets().get(name) if self.daemon.spec.server.console else None
        if asset is None:
            self._not_found()
            return
        body = index_page(bool(self.daemon.tokens)) if name == INDEX else asset.body
        self.set_header("Content-Type", asset.content_type)
        self.finish(body)

    def head(self, file: str | None = None) -> None:
        self.get(file)

    def _not_found(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        reason = "the console is off (server.console: false)" if not self.daemon.spec.server.console else "no such file"
        self.send_error_code(ServdError(ErrorCode.NOT_FOUND, f"no route {self.request.path}: {reason}"))


class OpenAPIDocument(TokenRequired):
    """GET /openapi.json, generated from the running spec on each request (a few milliseconds for
    50 endpoints; scripts and the console fetch it once per generation)."""

    def get(self) -> None:
        self.set_header("X-Content-Type-Options", "nosniff")
        self.send_json(document(self.daemon.spec, __version__, self.daemon.generation))
