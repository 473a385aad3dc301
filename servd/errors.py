"""The wire's error codes: each word, its HTTP status, and the exception that carries it."""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    """Error codes, the same words on the websocket and over HTTP (DESIGN.md §4)."""

    BAD_REQUEST = ("bad_request", 400)
    UNAUTHORIZED = ("unauthorized", 401)
    API_CLOSED = ("api_closed", 403)
    FORBIDDEN_ORIGIN = ("forbidden_origin", 403)
    UNKNOWN_ENDPOINT = ("unknown_endpoint", 404)
    NOT_FOUND = ("not_found", 404)
    METHOD_NOT_ALLOWED = ("method_not_allowed", 405)
    TOO_LARGE = ("too_large", 413)
    INVALID_INPUT = ("invalid_input", 422)
    UNKNOWN_HOST = ("unknown_host", 421)
    CLIENT_LIMIT = ("client_limit", 429)
    ENDPOINT_FAILED = ("endpoint_failed", 500)
    QUEUE_FULL = ("queue_full", 503)
    UNAVAILABLE = ("unavailable", 503)
    TIMEOUT = ("timeout", 504)
    CANCELLED = ("cancelled", 499)  # never sent over HTTP: the client is gone

    def __init__(self, word: str, http_status: int) -> None:
        self.word = word
        self.http_status = http_status


class ServdError(Exception):
    """A request that ends (or is refused) with a wire error code and a message for the client."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
