"""OpenAI-compatible chat: POST /v1/chat/completions, GET /v1/models and /v1/models/{model}.

Endpoints with an `openai:` block are served here under their model name, through the same queue
as every other request: the handler is the request's Sink and only translates OpenAI's shapes
(openai_shapes.py) to and from `daemon.admit(...)`. A request ends only through the endpoint's
finish (`end` here). A generator's pieces arrive as `partial` messages and are joined here, so the
entrypoint yields pieces, not the text so far. While a streamed request waits, its queued,
estimation and started messages go out as SSE comments (clients skip them), and as data chunks
without choices for a client that asks (`servd.queue_updates`). A client that hangs up cancels its
request. Errors are in OpenAI's shape, with servd's code words and statuses.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from tornado.iostream import StreamClosedError

from servd.core.failures import log_safely
from servd.core.request import Completed, Request, Terminal
from servd.daemon import auth
from servd.errors import ErrorCode, ServdError
from servd.protocols import openai_shapes as shapes
from servd.protocols import ws_messages as protocol
from servd.web import compat
from servd.web.handlers.base import JSONHandler, LimitedBody, allowed_methods, encode

NOT_RETRIED = (ErrorCode.ENDPOINT_FAILED, ErrorCode.TIMEOUT)  # the same call would fail the same way


class OpenAIHandler(JSONHandler):
    """Errors in OpenAI's shape, whoever makes them (a refusal, the web guard, Tornado)."""

    def send_error_code(
        self, error: ServdError, headers: dict[str, str] | None = None, param: str | None = None
    ) -> None:
        if error.code in NOT_RETRIED:
            self.set_header("x-should-retry", "false")  # OpenAI's clients would retry any 5xx
        if error.code is ErrorCode.UNAUTHORIZED:
            self.set_header("WWW-Authenticate", 'Bearer realm="servd"')
        for key, value in (headers or {}).items():
            self.set_header(key, value)
        self.send_json(shapes.error(error.code, error.message, param), error.code.http_status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self._allow_cross_origin()  # send_error cleared the headers prepare set
        if status_code == 405:
            allowed = allowed_methods(type(self))
            self.set_header("Allow", allowed)
            message = f"{self.request.method} is not allowed on {self.request.path}; it serves {allowed}"
            error = ServdError(ErrorCode.METHOD_NOT_ALLOWED, message)
        else:
            error = ServdError(
                ErrorCode.BAD_REQUEST if status_code < 500 else ErrorCode.ENDPOINT_FAILED, compat.reason(self)
            )
        self.set_header("Content-Type", "application/json")
        self.finish(encode(shapes.error(error.code, error.message)))

    def chat_endpoints(self) -> dict[str, str]:
        """model name -> endpoint name, for the endpoints served as chat models now."""
        return {e.spec.openai.model: e.name for e in self.daemon.endpoints.values() if e.spec.openai is not None}


class Models(OpenAIHandler):
    """GET /v1/models lists the chat models; GET /v1/models/{model} shows one (404 if none)."""

    def get(self, model: str | None = None) -> None:
        try:
            self.check_auth()
        except ServdError as exc:
            return self.send_error_code(exc)
        created = int(self.daemon.started_at)
        models = self.chat_endpoints()
        if model is None:
            return self.send_json(shapes.model_list([shapes.model_card(m, created) for m in models]))
        if model not in models:
            return self.send_error_code(_unknown_model(model), param="model")
        self.send_json(shapes.model_card(model, created))


class ChatCompletions(OpenAIHandler, LimitedBody):
    """POST /v1/chat/completions: one answer, or (`stream: true`) chat.completion.chunk events."""

    def initialize(self, daemon: Any) -> None:
        super().initialize(daemon)
        self.chat: shapes.ChatRequest | None = None
        self.record: Request | None = None
        self.outcome: asyncio.Future[Terminal] | None = None
        self.answer = shapes.Answer()
        self.ident = f"chatcmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.endpoint_name: str | None = None
        self.broken: str | None = None  # why the entrypoint's answer can't be sent, once it is known

    async def post(self) -> None:
        if compat.response_finished(self):
            return
        if self.too_large:
            return self._refuse(self.too_large_error())
        try:
            token = self.check_auth()
            self.chat = shapes.parse_chat(self._json())
            self._admit(self._endpoint_for(self.chat.model), token)
        except shapes.ChatError as exc:
            return self._refuse(ServdError(ErrorCode.BAD_REQUEST, str(exc)), param=exc.param)
        except ServdError as exc:
            return self._refuse(exc, "model" if exc.code is ErrorCode.UNKNOWN_ENDPOINT else None)
        await self.outcome  # type: ignore[misc]  # end() has answered; keep Tornado from finishing first

    def _json(self) -> Any:
        raw = bytes(self.body) or b"null"
        try:
            body = protocol.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ServdError(ErrorCode.BAD_REQUEST, f"body is not valid JSON: {exc}") from None
        too_deep = protocol.depth_problem(body, raw, self.daemon.spec.server.max_depth)
        if too_deep is not None:
            raise ServdError(ErrorCode.BAD_REQUEST, too_deep.replace("data is", "the body is"))
        return body

    def _endpoint_for(self, model: str) -> str:
        name = self.endpoint_name = self.chat_endpoints().get(model)
        if name is None:
            raise _unknown_model(model)
        if not self.daemon.endpoints[name].spec.api_open:
            raise ServdError(ErrorCode.API_CLOSED, f"model {model!r} (endpoint {name!r}) has api_open: false")
        return name

    def _admit(self, name: str, token: bytes | None) -> None:
        assert self.chat is not None
        request = Request(self.daemon.next_http_id(), auth.client_key(self.request, token), self.chat.data, self)
        request.size = len(self.body)
        request.priority, request.deadline_s = self.chat.priority, self.chat.deadline_s
        request.highest_priority = auth.highest_priority(token, self.daemon.tokens)
        self.outcome = asyncio.get_running_loop().create_future()
        self.daemon.admit(name, request)  # a refusal raises here, before anything is sent
        self.record = request
        if self.chat.stream:
            self.start_event_stream()

    def _refuse(self, error: ServdError, param: str | None = None) -> None:
        self.send_error_code(error, self.note_refusal(self.endpoint_name, error), param)

    # -- Sink ------------------------------------------------------------------------------

    def send(self, request: Request, message: str) -> None:
        assert self.chat is not None
        kind = protocol.message_type(message)
        if kind == "partial":
            self._take(request, protocol.loads(message)["data"])
            return
        if not self.chat.stream:
            return
        self._write(f": {message}\n\n")
        if self.chat.queue_updates:
            self._data(shapes.bare_chunk(self.ident, self.created, self.chat.model, servd=protocol.loads(message)))
        if kind == "started":
            self._data(self._chunk({"role": "assistant", "content": ""}))

    def _take(self, request: Request, value: Any) -> None:
        """One piece of a generator's answer: joined here, and sent on at once when streaming."""
        if self.broken is not None:
            return
        try:
            piece = shapes.piece(value)
        except shapes.NotAChatAnswer as exc:
            self._break(request, str(exc))
            self.daemon.cancel(request, f"servd stopped it: {exc}")
            return
        self.answer.add(piece)
        if self.chat and self.chat.stream and piece.text:
            self._data(self._chunk({"content": piece.text}))

    def _break(self, request: Request, problem: str) -> None:
        self.broken = problem
        log_safely(self.daemon.log.error, "chat entrypoint broke its contract", id=request.id, error=problem)

    def end(self, request: Request, terminal: Terminal) -> None:
        try:
            if not compat.response_finished(self):
                self._answer(request, terminal)
        finally:
            if self.outcome is not None and not self.outcome.done():
                self.outcome.set_result(terminal)

    def _answer(self, request: Request, terminal: Terminal) -> None:
        assert self.chat is not None
        if isinstance(terminal, Completed) and self.answer.pieces == 0:  # returned, not yielded
            self._take(request, protocol.loads(terminal.data_json))  # (a cancel of it is a no-op now)
        if self.broken is not None:
            self._fail(ServdError(ErrorCode.ENDPOINT_FAILED, f"the answer of model {self.chat.model!r}: {self.broken}"))
        elif isinstance(terminal, Completed):
            self._complete(request, terminal)
        else:
            self._fail(ServdError(terminal.code, terminal.message))

    def _complete(self, request: Request, terminal: Completed) -> None:
        assert self.chat is not None
        reason = self.answer.finish_reason(self.chat.data["max_tokens"])
        servd = shapes.timing(request.id, terminal.queue_s, terminal.run_s, terminal.batch_size)
        if not self.chat.stream:
            return self.send_json(
                shapes.completion(self.ident, self.created, self.chat.model, self.answer, reason, servd)
            )
        self._data(self._chunk({}, reason, servd=servd))
        if self.chat.include_usage:
            self._data(shapes.bare_chunk(self.ident, self.created, self.chat.model, usage=self.answer.usage))
        self._write("data: [DONE]\n\n")
        self.finish()

    def _fail(self, error: ServdError) -> None:
        """Before the stream began, a plain status; after, an error event (OpenAI's clients raise it)
        and the end of the stream, without [DONE]."""
        if not compat.response_started(self):
            return self.send_error_code(error)
        self._data(shapes.error(error.code, error.message))
        self.finish()

    def on_connection_close(self) -> None:
        super().on_connection_close()  # ends Tornado's wait for a body that will never arrive
        if self.record is not None and not self.record.done:
            self.daemon.cancel(self.record, "the client disconnected")

    # -- server-sent events ------------------------------------------------------------------

    def _chunk(self, delta: dict[str, Any], reason: str | None = None, **extra: Any) -> dict[str, Any]:
        assert self.chat is not None
        return shapes.chunk(self.ident, self.created, self.chat.model, delta, reason, **extra)

    def _data(self, value: dict[str, Any]) -> None:
        self._write(f"data: {encode(value)}\n\n")

    def _write(self, text: str) -> None:
        if compat.response_finished(self):
            return
        self.start_event_stream()
        try:
            self.write(text)
            self.flush()
        except StreamClosedError:
            pass


def _unknown_model(model: str) -> ServdError:
    return ServdError(ErrorCode.UNKNOWN_ENDPOINT, f"no model {model!r}; GET /v1/models lists them")
