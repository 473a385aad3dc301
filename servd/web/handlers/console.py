"""The web console's pages (GET /, /console/{file}) and the API document (GET /openapi.json).

The pages are static files shipped in the package (servd/web/console/), read once and served from
memory with an ETag. index.html is filled in at serving time: whether tokens are configured
(`data-auth`), so the console asks for one before its first call instead of drawing a refused
request; and its first state (servd.web.firstpaint: the live feed's hello and status, each
endpoint's example, and the overview as plain HTML), so the page is never blank, given only to
those the API would show it to (no tokens configured, or a valid one in the Authorization
header); anyone else gets the page with nothing of the deployment in it. Every page carries a
strict Content-Security-Policy: scripts and styles from this origin only (no inline script; the
first state is a JSON data block, which runs nothing), no framing by other sites, connections to
this origin only.

Loop thread only (Tornado handlers).
"""

from __future__ import annotations

import functools
import mimetypes
from dataclasses import dataclass
from importlib import resources
from typing import Any

from servd import __version__
from servd.daemon import auth
from servd.errors import ErrorCode, ServdError
from servd.protocols.openapi import document
from servd.web import firstpaint
from servd.web.handlers.base import JSONHandler
from servd.web.handlers.ops import TokenRequired
from servd.web.live import LiveFeed

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
MARKS = ("{{auth}}", "{{live}}", "{{overview}}", "{{state}}")
NEEDS_JS = "<noscript><p>The servd console needs JavaScript.</p></noscript>"
NEEDS_TOKEN = '<p class="quiet">This servd needs a token: the console asks for one.</p>' + NEEDS_JS
LOADING = '<p class="quiet">Connecting to servd…</p>' + NEEDS_JS  # no snapshot at hand (/console/index.html)
SNAPSHOT_NOTE = (
    '<noscript><p class="quiet">As it was when this page loaded: the live console needs JavaScript.</p></noscript>'
)


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


@functools.lru_cache(maxsize=1)
def index_parts() -> tuple[str, ...]:
    """index.html cut at its marks: text, mark, text, ... (each mark once, in MARKS order)."""
    text = assets()[INDEX].body.decode()
    parts: list[str] = []
    for mark in MARKS:
        before, found, text = text.partition(mark)
        assert found, f"{INDEX} lacks {mark}"
        parts.append(before)
    return (*parts, text)


def index_page(tokens: bool, state: dict[str, Any] | None) -> bytes:
    """index.html for a reader: with `state`, the first snapshot as data and as plain HTML."""
    if state is None:
        fills = ("token" if tokens else "none", "connecting…", NEEDS_TOKEN if tokens else LOADING, "null")
    else:
        overview = firstpaint.overview_html(state["status"]) + SNAPSHOT_NOTE
        fills = ("token" if tokens else "none", "snapshot", overview, firstpaint.script_json(state))
    parts = index_parts()
    out = [parts[0]]
    for fill, after in zip(fills, parts[1:], strict=True):
        out += [fill, after]
    return "".join(out).encode()


class ConsolePage(JSONHandler):
    """GET / (index.html) and GET /console/{file}; 404 not_found when server.console is false."""

    def initialize(self, daemon: Any, feed: LiveFeed | None = None) -> None:
        super().initialize(daemon)
        self.feed = feed

    def set_default_headers(self) -> None:
        for key, value in PAGE_HEADERS.items():
            self.set_header(key, value)

    def get(self, file: str | None = None) -> None:
        name = file or INDEX
        asset = assets().get(name) if self.daemon.spec.server.console else None
        if asset is None:
            self._not_found()
            return
        self.set_header("Content-Type", asset.content_type)
        if name != INDEX:
            self.finish(asset.body)
            return
        tokens = bool(self.daemon.tokens)
        if tokens:
            self.set_header("Vary", "Authorization")
        state = self._first_state() if not tokens or self._valid_header_token() else None
        if state is not None:
            self.set_header("Cache-Control", "no-store")  # a snapshot of live numbers: never reused
        self.finish(index_page(tokens, state))

    def _valid_header_token(self) -> bool:
        """A valid token in the Authorization header (one in the address is not taken for a page)."""
        header = self.request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        token = value.strip().encode() if scheme.lower() == "bearer" and value.strip() else None
        return token is not None and auth.is_valid(token, self.daemon.tokens)

    def _first_state(self) -> dict[str, Any] | None:
        if self.feed is None:
            return None
        return firstpaint.first_state(
            self.feed.hello(), self.feed.status(), {name: e.spec for name, e in self.daemon.endpoints.items()}
        )

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
