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

import secrets
import time
from typing import Any

from servd.core.events import Completed, Partial, Progress, Started, Terminal
from servd.core.failures import log_safely
from servd.core.request import Request
from servd.errors import ErrorCode, ServdError
from servd.inputs import jsontext
from servd.protocols import openai_shapes as shapes
from servd.protocols import ws_messages as protocol
from servd.web import compat
from servd.web.handlers.base import ErrorShape, FieldError, JSONHandler, encode
from servd.web.handlers.lifecycle import RequestLifecycle

# OpenAI's error answers, with servd's code words and statuses; a failed or timed-out call would
# fail the same way again, so those say x-should-retry: false (OpenAI's clients retry any 5xx).
OPENAI_ERRORS = ErrorShape(
    lambda code, message, param: shapes.error(code, message, param),
    not_retried=frozenset((ErrorCode.ENDPOINT_FAILED, ErrorCode.TIMEOUT)),
)


class OpenAIHandler(JSONHandler):
    """Errors in OpenAI's shape, whoever makes them (a refusal, the web guard, Tornado)."""

    errors = OPENAI_ERRORS

    def chat_endpoints(self) -> dict[str, str]:
        """model name -> endpoint name, for the endpoints served as chat models now."""
        return {e.spec.openai.model: e.name for e in self.daemon.endpoints.values() if e.spec.openai is not None}


class Models(OpenAIHandler):
    """GET /v1/models lists the chat models; GET /v1/models/{model} shows one (404 if none)."""

    def get(self, model: str | None = None) -> None:
        def build() -> dict[str, Any]:
            created = int(self.daemon.started_at)
            models = self.chat_endpoints()
            if model is None:
                return shapes.model_list([shapes.model_card(m, created) for m in models])
            if model not in models:
                raise _unknown_model(model)
            return shapes.model_card(model, created)

        self.answer_with(build)


class ChatCompletions(OpenAIHandler, RequestLifecycle):
    """POST /v1/chat/completions: one answer, or (`stream: true`) chat.completion.chunk events."""

    def initialize(self, daemon: Any) -> None:
        super().initialize(daemon)
        self.chat: shapes.ChatRequest | None = None
        self.reply = shapes.Answer()
        self.ident = f"chatcmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.broken: str | None = None  # why the entrypoint's answer can't be sent, once it is known

    def target(self) -> None:
        """The model is named in the body; with no chat model at all, refuse at the headers."""
        if not self.chat_endpoints():
            raise FieldError(
                ErrorCode.UNKNOWN_ENDPOINT, "this servd serves no chat models (no endpoint has openai:)", "model"
            )

    def build(self) -> Request:
        body = self.json_body()
        self.check_depth(body, "the body")
        try:
            chat = self.chat = shapes.parse_chat(body)
        except shapes.ChatError as exc:
            raise FieldError(ErrorCode.BAD_REQUEST, str(exc), exc.param) from None
        self.endpoint_name = self._endpoint_for(chat.model)
        return self.new_request(chat.data, progress=True, priority=chat.priority, deadline_s=chat.deadline_s)

    def _endpoint_for(self, model: str) -> str:
        name = self.chat_endpoints().get(model)
        if name is None:
            raise _unknown_model(model)
        return self.open_endpoint(self.daemon.endpoints[name], f"model {model!r} (endpoint {name!r})")

    def admitted(self, request: Request) -> None:
        if self.chat is not None and self.chat.stream:
            self.events.start()

    # -- Sink ------------------------------------------------------------------------------

    def progress(self, request: Request, event: Progress) -> None:
        assert self.chat is not None
        if isinstance(event, Partial):
            self._take(request, jsontext.loads(event.data_json))
            return
        if not self.chat.stream:
            return
        self.events.send(f": {protocol.progress(request.id, event)}\n\n")
        if self.chat.queue_updates:
            servd = {**protocol.progress_body(event), "id": request.id}
            self._data(shapes.bare_chunk(self.ident, self.created, self.chat.model, servd=servd))
        if isinstance(event, Started):
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
        self.reply.add(piece)
        if self.chat and self.chat.stream and piece.text:
            self._data(self._chunk({"content": piece.text}))

    def _break(self, request: Request, problem: str) -> None:
        self.broken = problem
        log_safely(self.daemon.log.error, "chat entrypoint broke its contract", id=request.id, error=problem)

    def answer(self, request: Request, terminal: Terminal) -> None:
        assert self.chat is not None
        if isinstance(terminal, Completed) and self.reply.pieces == 0:  # returned, not yielded
            self._take(request, jsontext.loads(terminal.data_json))  # (a cancel of it is a no-op now)
        if self.broken is not None:
            self._fail(ServdError(ErrorCode.ENDPOINT_FAILED, f"the answer of model {self.chat.model!r}: {self.broken}"))
        elif isinstance(terminal, Completed):
            self._complete(request, terminal)
        else:
            self._fail(ServdError(terminal.code, terminal.message))

    def _complete(self, request: Request, terminal: Completed) -> None:
        assert self.chat is not None
        reason = self.reply.finish_reason(self.chat.data["max_tokens"])
        servd = shapes.timing(request.id, terminal.queue_s, terminal.run_s, terminal.batch_size)
        if not self.chat.stream:
            return self.send_json(
                shapes.completion(self.ident, self.created, self.chat.model, self.reply, reason, servd)
            )
        self._data(self._chunk({}, reason, servd=servd))
        if self.chat.include_usage:
            self._data(shapes.bare_chunk(self.ident, self.created, self.chat.model, usage=self.reply.usage))
        self.events.send("data: [DONE]\n\n")

    def _fail(self, error: ServdError) -> None:
        """Before the stream began, a plain status; after, an error event (OpenAI's clients raise it)
        and the end of the stream, without [DONE]."""
        if not compat.response_started(self):
            return self.send_error_code(error)
        self._data(shapes.error(error.code, error.message))

    # -- server-sent events ------------------------------------------------------------------

    def _chunk(self, delta: dict[str, Any], reason: str | None = None, **extra: Any) -> dict[str, Any]:
        assert self.chat is not None
        return shapes.chunk(self.ident, self.created, self.chat.model, delta, reason, **extra)

    def _data(self, value: dict[str, Any]) -> None:
        self.events.send(f"data: {encode(value)}\n\n")


def _unknown_model(model: str) -> ServdError:
    return FieldError(ErrorCode.UNKNOWN_ENDPOINT, f"no model {model!r}; GET /v1/models lists them", "model")
