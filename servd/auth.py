"""Bearer tokens: reading the tokens file and checking a request against it in constant time."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from tornado.httputil import HTTPServerRequest


def read_tokens(path: Path | None) -> tuple[bytes, ...]:
    """Tokens from `path`, one a line; blank lines and # comments are skipped. () = auth off."""
    if path is None:
        return ()
    lines = path.read_text("utf-8").splitlines()
    tokens = tuple(line.strip().encode() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if not tokens:
        raise ValueError(f"{path}: the tokens file has no tokens; every request would be refused")
    return tokens


def presented_token(request: HTTPServerRequest) -> bytes | None:
    """`Authorization: Bearer X`, or `?token=X` for browsers, which can't set websocket headers."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip().encode()
    query = request.query_arguments.get("token")
    return query[0] if query else None


def is_valid(token: bytes | None, tokens: tuple[bytes, ...]) -> bool:
    """Compare against every token without stopping early, so timing leaks nothing.

    Both sides are hashed first: compare_digest returns early on a length mismatch, which would
    tell an attacker each token's length.
    """
    if not tokens:
        return True
    presented = hashlib.sha256(token or b"").digest()
    found = False
    for known in tokens:
        found |= hmac.compare_digest(presented, hashlib.sha256(known).digest())
    return found


def client_key(request: HTTPServerRequest, token: bytes | None) -> str:
    """Who a client is for queue.max_per_client: its token when auth is on, else its address."""
    if token:
        return "token:" + hashlib.sha256(token).hexdigest()[:16]
    return f"addr:{request.remote_ip}"
