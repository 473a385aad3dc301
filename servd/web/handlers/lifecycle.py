"""One HTTP request's life, for every route that carries one: servd's POST /v1/endpoints/{name},
v2's infer and OpenAI's chat completions. A subclass only translates its protocol (`target`,
`build`, `answer`, `progress`); the order of checks, the limits and the Sink live here, once.

1. Headers in (`prepare`): the web guard, then the token, a Content-Length over
   server.max_message_bytes and the endpoint the path names (unknown, or api_open: false), each
   refused at once, before any of the body is read or held. The body's clock starts.
2. The body streams in, held to max_message_bytes (a chunked one that grows past it is refused
   as it arrives) and to server.body_timeout_s from the headers: a body that stops or trickles
   is answered 408 at the bound and counted (servd_rejected{reason="timeout"}).
3. Body in (`post`): the subclass builds the Request from it, the daemon admits it (a refusal
   is a plain status and body), and the handler is its Sink until its one terminal (`end`).
   An answer that streams writes through sse.EventStream, which drops a reader that stops
   reading (server.max_client_buffer_bytes) and cancels its request.
4. A client that hangs up cancels its request.

A refusal while the body is still arriving goes out whole at once (with Connection: close) and
what still arrives is read and dropped, for up to LINGER_S: closing a connection on unread data
resets it, and the reset can destroy the answer before the client has read it. A client that
sent `Expect: 100-continue` has not sent its body; its connection closes once the answer is out.

Loop thread only (Tornado handlers).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from tornado.ioloop import IOLoop
from tornado.iostream import StreamClosedError

from servd.core.events import Progress, Terminal
from servd.core.request import Request
from servd.daemon import auth
from servd.errors import ErrorCode, ServdError
from servd.inputs import jsontext
from servd.web import compat
from servd.web.handlers.base import JSONHandler, error_answer
from servd.web.handlers.sse import EventStream, close_connection

if TYPE_CHECKING:
    from servd.core.endpoint import Endpoint
    from servd.daemon.daemon import Daemon

LINGER_S = 5.0  # after an early refusal: how long the rest of the body is read and dropped
REQUEST_TIMEOUT = 408


class RequestLifecycle(JSONHandler):
    """A POST that carries one request: checked at its headers, bounded while its body arrives,
    admitted when it has, and the Sink of its request until it ends."""

    def initialize(self, daemon: Daemon) -> None:
        super().initialize(daemon)
        self.body = bytearray()
        self.raw = b""  # the body as bytes, once a JSON one is parsed
        self.token: bytes | None = None
        self.endpoint_name: str | None = None  # from the path, or (OpenAI) the body
        self.record: Request | None = None
        self.outcome: asyncio.Future[Terminal] | None = None
        self.reading = False  # between the headers and the body's end
        self.refused = False  # answered before the body ended: what still arrives is dropped
        self.timer: object | None = None
        self.events = EventStream(self, daemon.spec.server.max_client_buffer_bytes, self.client_gone)

    # -- what a protocol fills in ----------------------------------------------------------------

    def target(self) -> str | None:
        """The endpoint the path names, checked (unknown, api_open); None when the body names it."""
        return None

    def build(self) -> Request:
        """The request from the body (and `endpoint_name`, if the body names it); raises ServdError."""
        raise NotImplementedError

    def answer(self, request: Request, terminal: Terminal) -> None:
        """Write the request's terminal (the response is not finished yet)."""
        raise NotImplementedError

    def admitted(self, request: Request) -> None:
        """Called once the request is admitted: a stream starts here."""

    def progress(self, request: Request, event: Progress) -> None:
        """A progress event while the request waits and runs."""

    def release(self) -> None:
        """The request has ended: drop what refers to it (Tornado's handler, request and connection
        refer to each other and are freed by the cyclic collector; this is freed now instead)."""
        self.record = None
        self.raw = b""

    # -- shared by the protocols -----------------------------------------------------------------

    def open_endpoint(self, endpoint: Endpoint, what: str) -> str:
        """`endpoint`'s name, if it serves HTTP (`what` names it in the refusal)."""
        if not endpoint.spec.api_open:
            raise ServdError(ErrorCode.API_CLOSED, f"{what} has api_open: false; use its websocket queue")
        return endpoint.name

    def json_body(self) -> Any:
        self.raw = bytes(self.body) or b"null"
        try:
            return jsontext.loads(self.raw)
        except (ValueError, RecursionError) as exc:
            raise ServdError(ErrorCode.BAD_REQUEST, f"body is not valid JSON: {exc}") from None

    def check_depth(self, value: Any, what: str = "data") -> None:
        """Refuse `value` (part of the body) nested deeper than server.max_depth."""
        problem = jsontext.depth_problem(value, self.raw, self.daemon.spec.server.max_depth)
        if problem is not None:
            raise ServdError(ErrorCode.BAD_REQUEST, problem.replace("data is", f"{what} is", 1))

    def new_request(self, data: Any, *, progress: bool, priority: int, deadline_s: float | None) -> Request:
        request = Request(
            self.daemon.next_http_id(), auth.client_key(self.request, self.token), data, self, progress=progress
        )
        request.size = len(self.body)
        request.priority, request.deadline_s = priority, deadline_s
        request.highest_priority = auth.highest_priority(self.token, self.daemon.tokens)
        return request

    def refuse(self, error: ServdError) -> None:
        """Answer `error` instead of the request, and count it; while the body is still arriving
        the answer goes out whole now and the rest of the body is dropped (see the module doc)."""
        self.refused = True
        headers = self.note_refusal(self.endpoint_name, error)
        if not (self.reading and self._lingers()):
            self._disarm()
            self.send_error_code(error, headers)
            return
        body = error_answer(self, self.errors, error, headers=headers)
        self.set_header("Content-Length", str(len(body)))
        self.set_header("Connection", "close")
        try:
            self.write(body)
            self.flush()
        except StreamClosedError:
            pass
        self._arm(LINGER_S, self._close)

    # -- the life ----------------------------------------------------------------------------------

    def prepare(self) -> None:
        super().prepare()
        if compat.response_finished(self) or self.request.method != "POST":
            return
        self.reading = True
        try:
            self.token = self.check_auth()
            self._check_declared_size()
            self.endpoint_name = self.target()
        except ServdError as exc:
            self.refuse(exc)
            return
        self._arm(self.daemon.spec.server.body_timeout_s, self._body_timed_out)

    def data_received(self, chunk: bytes) -> None:
        if self.refused or not self.reading:
            return
        limit = self.daemon.spec.server.max_message_bytes
        if len(self.body) + len(chunk) > limit:
            self.body = bytearray()
            self.refuse(
                ServdError(ErrorCode.TOO_LARGE, f"body is over {limit} bytes; server.max_message_bytes={limit}")
            )
            return
        self.body += chunk

    async def post(self, *args: str, **kwargs: str) -> None:
        self.reading = False
        self._disarm()
        if self.refused or compat.response_finished(self):
            return
        try:
            request = self.build()
            assert self.endpoint_name is not None
            self.outcome = asyncio.get_running_loop().create_future()
            self.daemon.admit(self.endpoint_name, request)  # a refusal raises here, before anything is sent
        except ServdError as exc:
            self.refuse(exc)
            return
        self.record = request
        self.admitted(request)
        await self.outcome  # end() has answered; keep Tornado from finishing first

    # -- Sink ------------------------------------------------------------------------------------

    def send(self, request: Request, event: Progress) -> None:
        if not compat.response_finished(self):
            self.progress(request, event)

    def end(self, request: Request, terminal: Terminal) -> None:
        # Answer now, not when post() resumes: a drain ends requests and closes connections in one
        # go, and a reply written later would meet a closed connection.
        try:
            if not compat.response_finished(self):
                self.answer(request, terminal)
                if not compat.response_finished(self):
                    self.finish()
        finally:
            self.release()
            if self.outcome is not None and not self.outcome.done():
                self.outcome.set_result(terminal)

    def client_gone(self) -> None:
        """The client hung up, or was dropped for not reading its stream: cancel its request."""
        self.events.gone = True
        if self.record is not None and not self.record.done:
            self.daemon.cancel(self.record, "the client disconnected")

    def on_connection_close(self) -> None:
        super().on_connection_close()  # ends Tornado's wait for a body that will never arrive
        self._disarm()
        self.client_gone()

    def on_finish(self) -> None:
        self._disarm()

    # -- limits ----------------------------------------------------------------------------------

    def _declared_length(self) -> int | None:
        declared = self.request.headers.get("Content-Length", "")
        return int(declared) if declared.isascii() and declared.isdigit() else None

    def _check_declared_size(self) -> None:
        limit = self.daemon.spec.server.max_message_bytes
        declared = self._declared_length()
        if declared is not None and declared > limit:
            raise ServdError(ErrorCode.TOO_LARGE, f"body is {declared} bytes; server.max_message_bytes={limit}")

    def _lingers(self) -> bool:
        """Whether a refusal waits for the body to end: there is one coming, within the limit."""
        headers = self.request.headers
        if "100-continue" in headers.get("Expect", "").lower():
            return False
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            return True
        declared = self._declared_length()
        return declared is not None and 0 < declared <= self.daemon.spec.server.max_message_bytes

    def _body_timed_out(self) -> None:
        self.timer = None
        if compat.response_finished(self) or not self.reading:
            return
        bound = self.daemon.spec.server.body_timeout_s
        error = ServdError(
            ErrorCode.TIMEOUT,
            f"the request body did not arrive within server.body_timeout_s={bound:g} ({len(self.body)} bytes did)",
        )
        self.reading, self.refused = False, True  # answered now: Tornado closes once it is written
        headers = {**self.note_refusal(self.endpoint_name, error), "Connection": "close"}
        self.send_error_code(error, headers, status=REQUEST_TIMEOUT)

    def _close(self) -> None:
        """The linger after an early refusal is over: close, whatever of the body is still coming."""
        self.timer = None
        close_connection(self)

    def _arm(self, delay: float, callback: Any) -> None:
        self._disarm()
        self.timer = IOLoop.current().call_later(delay, callback)

    def _disarm(self) -> None:
        if self.timer is not None:
            IOLoop.current().remove_timeout(self.timer)
            self.timer = None
