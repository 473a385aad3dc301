"""POST /v1/endpoints/{name}: the same queue over HTTP, as one JSON answer or as SSE; GET shows the endpoint.

Only the translation lives here: the body `{"data": ..., "priority"?, "deadline_s"?}` to a Request,
its terminal to `{"data", "timing"}` or an error, its progress to SSE events named by kind. The
checks, limits and cancel-on-close are lifecycle.RequestLifecycle's. Loop thread only.
"""

from __future__ import annotations

from typing import Any

from servd.core.events import Completed, Progress, Terminal
from servd.core.request import Request
from servd.errors import ErrorCode, ServdError
from servd.protocols import ws_messages as protocol
from servd.web.handlers.lifecycle import RequestLifecycle
from servd.web.snapshot import endpoint_snapshot


class EndpointHTTP(RequestLifecycle):
    def initialize(self, daemon: Any) -> None:
        super().initialize(daemon)
        self.streaming = False

    def get(self, name: str) -> None:
        """One endpoint's effective config and live stats."""
        self.answer_with(lambda: endpoint_snapshot(self.daemon.endpoint(name)))

    def target(self) -> str:
        name = self.path_kwargs["name"]
        return self.open_endpoint(self.daemon.endpoint(name), f"endpoint {name!r}")

    def build(self) -> Request:
        body = self.json_body()
        if not isinstance(body, dict) or "data" not in body:
            raise ServdError(ErrorCode.BAD_REQUEST, 'body must be a JSON object {"data": ...}')
        self.check_depth(body["data"])
        try:
            priority, deadline_s = protocol.scheduling(body)
        except ValueError as exc:
            raise ServdError(ErrorCode.BAD_REQUEST, str(exc)) from None
        self.streaming = "text/event-stream" in self.request.headers.get("Accept", "")
        return self.new_request(body["data"], progress=self.streaming, priority=priority, deadline_s=deadline_s)

    def admitted(self, request: Request) -> None:
        # a refusal was a plain status and JSON body, over SSE too; only what happens after
        # admission arrives as events (with the request's id)
        if self.streaming:
            self.events.start()

    def progress(self, request: Request, event: Progress) -> None:
        if self.streaming:
            self._event(event.kind, protocol.progress(request.id, event))

    def answer(self, request: Request, terminal: Terminal) -> None:
        if self.streaming:
            kind = "completed" if isinstance(terminal, Completed) else "error"
            self._event(kind, protocol.terminal(request.id, terminal))
        elif isinstance(terminal, Completed):
            timing = protocol.timing(terminal.queue_s, terminal.run_s, terminal.batch_size)
            self.send_json(f'{{"data":{terminal.data_json},"timing":{timing}}}')
        else:
            self.send_error_code(ServdError(terminal.code, terminal.message))

    def _event(self, kind: str, message: str) -> None:
        self.events.send(f"event: {kind}\ndata: {message}\n\n")
