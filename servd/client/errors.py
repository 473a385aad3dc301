"""The client's exceptions: one class per wire error code, each carrying the server's message.

`error_from_wire` maps a code word to its class; a word this client doesn't know (a newer
server) still raises `ServdError`, with `code` set, so nothing is swallowed. The words come
from servd.errors.ErrorCode, so client and server can't drift apart.
"""

from __future__ import annotations

from servd.errors import ErrorCode


class ServdError(Exception):
    """A request that ended with (or was refused with) an error.

    `code` is the wire word (`queue_full`, ...), `message` the server's explanation, `status`
    the HTTP status when the HTTP transport carried it (None over the websocket).
    """

    code = "error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.status = status

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class BadRequest(ServdError):
    code = ErrorCode.BAD_REQUEST.word


class Unauthorized(ServdError):
    code = ErrorCode.UNAUTHORIZED.word


class ApiClosed(ServdError):
    code = ErrorCode.API_CLOSED.word


class ForbiddenOrigin(ServdError):
    code = ErrorCode.FORBIDDEN_ORIGIN.word


class UnknownEndpoint(ServdError):
    code = ErrorCode.UNKNOWN_ENDPOINT.word


class NotFound(ServdError):
    code = ErrorCode.NOT_FOUND.word


class MethodNotAllowed(ServdError):
    code = ErrorCode.METHOD_NOT_ALLOWED.word


class UnknownHost(ServdError):
    code = ErrorCode.UNKNOWN_HOST.word


class TooLarge(ServdError):
    code = ErrorCode.TOO_LARGE.word


class InvalidInput(ServdError):
    code = ErrorCode.INVALID_INPUT.word


class ClientLimit(ServdError):
    code = ErrorCode.CLIENT_LIMIT.word


class EndpointFailed(ServdError):
    code = ErrorCode.ENDPOINT_FAILED.word


class QueueFull(ServdError):
    """`retry_after_s` is the server's Retry-After hint (HTTP only; None over the websocket)."""

    code = ErrorCode.QUEUE_FULL.word
    retry_after_s: float | None = None


class Unavailable(ServdError):
    code = ErrorCode.UNAVAILABLE.word


class Timeout(ServdError, TimeoutError):
    """The server's queue.timeout_s passed, or a client-side wait (`timeout=`) ran out.

    Also a builtin TimeoutError, so `except TimeoutError` catches it.
    """

    code = ErrorCode.TIMEOUT.word


class Cancelled(ServdError):
    code = ErrorCode.CANCELLED.word


class ConnectionLost(ServdError, ConnectionError):
    """The connection closed before the request's terminal message arrived.

    The server cancels what a closed connection had in flight, so the request did not finish
    for this client; retrying it is safe for idempotent endpoints. `close_code` and
    `close_reason` are the websocket's close frame (None when the socket just dropped).
    """

    code = "connection_lost"
    close_code: int | None = None
    close_reason: str | None = None


class ConnectFailed(ServdError, ConnectionError):
    """The client could not reach the server (refused, unresolvable, TLS, connect timeout)."""

    code = "connect_failed"


BY_CODE: dict[str, type[ServdError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        Unauthorized,
        ApiClosed,
        ForbiddenOrigin,
        UnknownEndpoint,
        NotFound,
        MethodNotAllowed,
        UnknownHost,
        TooLarge,
        InvalidInput,
        ClientLimit,
        EndpointFailed,
        QueueFull,
        Unavailable,
        Timeout,
        Cancelled,
    )
}


def error_from_wire(code: str, message: str, status: int | None = None) -> ServdError:
    """The typed exception for a wire `{"code", "message"}`; unknown codes give ServdError itself."""
    cls = BY_CODE.get(code)
    if cls is None:
        return ServdError(message, code=code, status=status)
    return cls(message, status=status)


def error_from_body(body: object, status: int | None = None) -> ServdError:
    """The exception for a message or HTTP body holding `"error": {"code", "message"}`."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        return error_from_wire(error["code"], str(error.get("message", "")), status)
    return ServdError(f"unexpected answer from the server: {str(body)[:200]}", code="bad_response", status=status)
