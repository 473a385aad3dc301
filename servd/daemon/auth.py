"""Bearer tokens: reading the tokens file and checking a request against it in constant time."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from tornado.httputil import HTTPServerRequest

# Browsers can't set headers on a websocket; the console offers its token as a subprotocol instead
# (as Kubernetes does), base64url-encoded since tokens may hold characters a subprotocol can't:
# `new WebSocket(url, ["servd", "servd.bearer." + base64url(token)])`. servd answers "servd".
SUBPROTOCOL = "servd"
TOKEN_SUBPROTOCOL = "servd.bearer."


class TokensError(ValueError):
    """A tokens file that can't be used; the message names the file and line."""


@dataclass(frozen=True)
class Token:
    """One line of the tokens file: the secret, and the highest priority level it may ask for."""

    secret: bytes
    highest_priority: int = 1  # 1 = every level


def read_tokens(path: Path | None) -> tuple[Token, ...]:
    """Tokens from `path`, one a line, optionally followed by `priority=N` (the highest level the
    token may ask for; a plain token may ask for any). Blank lines and # comments are skipped.
    () = auth off. A file of plain tokens, one a line, reads as it always did."""
    if path is None:
        return ()
    tokens = []
    for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            tokens.append(_token(line.split(), f"{path}:{number}"))
    if not tokens:
        raise TokensError(f"{path}: the tokens file has no tokens; every request would be refused")
    return tuple(tokens)


def _token(fields: list[str], where: str) -> Token:
    secret, options = fields[0], fields[1:]
    highest = 1
    for option in options:
        key, _, value = option.partition("=")
        if key != "priority" or not value.isdigit() or int(value) < 1:
            raise TokensError(f"{where}: {option!r} is not an option; write TOKEN or TOKEN priority=N (N >= 1)")
        highest = int(value)
    return Token(secret.encode(), highest)


def highest_priority(token: bytes | None, tokens: tuple[Token, ...]) -> int:
    """The highest level (smallest number) `token` may ask for; 1 when auth is off."""
    presented = hashlib.sha256(token or b"").digest()
    for known in tokens:
        if hmac.compare_digest(presented, hashlib.sha256(known.secret).digest()):
            return known.highest_priority
    return 1


def presented_token(request: HTTPServerRequest) -> bytes | None:
    """`Authorization: Bearer X`; for browsers, which can't set websocket headers, the subprotocol
    `servd.bearer.<base64url X>` or `?token=X`."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip().encode()
    offered = request.headers.get("Sec-WebSocket-Protocol")
    if offered:
        for protocol in offered.split(","):
            if protocol.strip().startswith(TOKEN_SUBPROTOCOL):
                return _unbase64url(protocol.strip().removeprefix(TOKEN_SUBPROTOCOL))
    query = request.query_arguments.get("token")
    return query[0] if query else None


def _unbase64url(text: str) -> bytes:
    """The token in a subprotocol; b"" (a wrong token) when it isn't base64url."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return b""


def is_valid(token: bytes | None, tokens: tuple[Token, ...]) -> bool:
    """Compare against every token without stopping early, so timing leaks nothing.

    Both sides are hashed first: compare_digest returns early on a length mismatch, which would
    tell an attacker each token's length.
    """
    if not tokens:
        return True
    presented = hashlib.sha256(token or b"").digest()
    found = False
    for known in tokens:
        found |= hmac.compare_digest(presented, hashlib.sha256(known.secret).digest())
    return found


def client_key(request: HTTPServerRequest, token: bytes | None) -> str:
    """Who a client is for queue.max_per_client: its token when auth is on, else its address."""
    if token:
        return "token:" + hashlib.sha256(token).hexdigest()[:16]
    return f"addr:{request.remote_ip}"
