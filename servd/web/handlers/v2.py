"""The Open Inference Protocol (KServe v2) over HTTP: /v2, /v2/health/*, /v2/models/{name}/...

Each endpoint is a model of version 1. Inference goes through the same queue, limits, tokens
and metrics as everything else: the Infer handler only translates (v2.py) to and from
`daemon.admit(...)` and is its request's Sink. An endpoint with `tensors:` gets the request's
arrays (JSON or binary); one without takes one BYTES input `data` holding JSON text and answers
with one BYTES output `data` holding its JSON result. Errors are the protocol's
`{"error": "..."}` with servd's statuses, except that invalid input is 400 as the protocol has
it. A client that hangs up cancels its request.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from servd import __version__
from servd.core.endpoint import Endpoint
from servd.core.request import Completed, Request, Terminal
from servd.daemon import auth
from servd.errors import ErrorCode, ServdError
from servd.inputs import tensors
from servd.protocols import v2_codec as v2
from servd.web import compat
from servd.web.handlers.base import JSONHandler, LimitedBody, allowed_methods

STATUS = {ErrorCode.INVALID_INPUT: 400}  # the v2 protocol's status where it differs from servd's


class V2Handler(JSONHandler):
    """Errors in the v2 shape, whoever makes them (a refusal, the web guard, Tornado)."""

    def send_error_code(self, error: ServdError, headers: dict[str, str] | None = None) -> None:
        if error.code is ErrorCode.UNAUTHORIZED:
            self.set_header("WWW-Authenticate", 'Bearer realm="servd"')
        for key, value in (headers or {}).items():
            self.set_header(key, value)
        self.set_header("Content-Type", "application/json")
        self.send_json(v2.error_body(error.message), STATUS.get(error.code, error.code.http_status))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self._allow_cross_origin()  # send_error cleared the headers prepare set
        message = compat.reason(self)
        if status_code == 405:
            allowed = allowed_methods(type(self))
            self.set_header("Allow", allowed)
            message = f"{self.request.method} is not allowed on {self.request.path}; it serves {allowed}"
        self.set_header("Content-Type", "application/json")
        self.finish(v2.error_body(message))

    def model(self, name: str, version: str | None) -> Endpoint:
        """The endpoint served as model `name` (version 1); 404 for another name or version."""
        try:
            endpoint = self.daemon.endpoint(name)
        except ServdError as exc:
            if exc.code is ErrorCode.UNKNOWN_ENDPOINT:
                raise ServdError(exc.code, f"no model {name!r}; servd's endpoints are its models") from None
            raise
        if version not in (None, "", v2.VERSION):
            raise ServdError(ErrorCode.NOT_FOUND, f"model {name!r} has no version {version!r}; it is version 1")
        return endpoint

    def answer(self, build: Any) -> None:
        """Check the token, then send what `build()` returns, or its ServdError."""
        try:
            self.check_auth()
            self.send_json(build())
        except ServdError as exc:
            self.send_error_code(exc)


class ServerMetadata(V2Handler):
    def get(self) -> None:
        self.answer(lambda: v2.server_metadata(__version__))


class Live(V2Handler):
    check_host = False  # probes, as /healthz

    def get(self) -> None:
        self.send_json({"live": True})


class Ready(V2Handler):
    check_host = False

    def get(self) -> None:
        if not self.daemon.ready or self.daemon.shutting_down:
            what = "shutting down" if self.daemon.shutting_down else "loading its models"
            return self.send_error_code(ServdError(ErrorCode.UNAVAILABLE, f"servd is {what}"))
        self.send_json({"ready": True})


class ModelMetadata(V2Handler):
    def get(self, name: str, version: str | None = None) -> None:
        self.answer(lambda: v2.model_metadata(self.model(name, version).spec))


class ModelReady(V2Handler):
    def get(self, name: str, version: str | None = None) -> None:
        try:
            self.check_auth()
            endpoint = self.model(name, version)
            if not endpoint.accepting or not endpoint.instances.live():
                raise ServdError(ErrorCode.UNAVAILABLE, f"model {name!r} is not ready (loading or draining)")
        except ServdError as exc:
            return self.send_error_code(exc)
        self.send_json({"name": name, "ready": True})


class ModelConfig(V2Handler):
    def get(self, name: str, version: str | None = None) -> None:
        def build() -> dict[str, Any]:
            endpoint = self.model(name, version)
            return v2.model_config(endpoint.spec, endpoint.instances.devices())

        self.answer(build)


class Statistics(V2Handler):
    """The statistics extension: every model's, or one's."""

    def get(self, name: str | None = None, version: str | None = None) -> None:
        def build() -> dict[str, Any]:
            endpoints = [self.model(name, version)] if name else list(self.daemon.endpoints.values())
            return {"model_stats": [v2.model_statistics(e.name, e.stats) for e in endpoints]}

        self.answer(build)


class Infer(V2Handler, LimitedBody):
    """POST /v2/models/{name}[/versions/1]/infer, JSON or with binary tensor data."""

    def initialize(self, daemon: Any) -> None:
        super().initialize(daemon)
        self.name = ""
        self.parsed: v2.InferRequest | None = None
        self.record: Request | None = None
        self.outcome: asyncio.Future[Terminal] | None = None

    async def post(self, name: str, version: str | None = None) -> None:
        if compat.response_finished(self):
            return
        self.name = name
        if self.too_large:
            return self._refuse(self.too_large_error())
        try:
            self._admit(name, version)
        except v2.V2Error as exc:
            return self._refuse(ServdError(ErrorCode.BAD_REQUEST, str(exc)))
        except ServdError as exc:
            return self._refuse(exc)
        await self.outcome  # type: ignore[misc]  # end() has answered; keep Tornado from finishing first

    def _admit(self, name: str, version: str | None) -> None:
        token = self.check_auth()
        endpoint = self.model(name, version)
        if not endpoint.spec.api_open:
            raise ServdError(ErrorCode.API_CLOSED, f"model {name!r} has api_open: false; use its websocket queue")
        parsed = self.parsed = v2.parse_infer(self.body, self.request.headers.get(v2.HEADER_LENGTH))
        request = Request(self.daemon.next_http_id(), auth.client_key(self.request, token), None, self, False)
        request.data = self._data(endpoint, parsed)
        request.size = len(self.body)
        request.priority, request.deadline_s = parsed.priority, parsed.timeout_s
        request.highest_priority = auth.highest_priority(token, self.daemon.tokens)
        self.outcome = asyncio.get_running_loop().create_future()
        self.daemon.admit(name, request)  # a refusal raises here, before anything is sent
        self.record = request

    def _data(self, endpoint: Endpoint, parsed: v2.InferRequest) -> Any:
        declared = endpoint.spec.tensors
        if declared is None:
            v2.check_outputs(parsed.outputs, [v2.JSON_TENSOR])
            return v2.json_data(parsed, self.daemon.spec.server.max_depth)
        v2.check_outputs(parsed.outputs, [t.name for t in declared.outputs])
        datatypes = {t.name: t.datatype for t in declared.outputs}
        reply = functools.partial(v2.infer_response, model=self.name, request=parsed, datatypes=datatypes)
        return tensors.TensorInput(parsed.inputs, reply)

    def _refuse(self, error: ServdError) -> None:
        self.send_error_code(error, self.note_refusal(self.name or None, error))

    # -- Sink ------------------------------------------------------------------------------

    def send(self, request: Request, message: str) -> None:
        """Progress messages: none are asked for (progress=False)."""

    def end(self, request: Request, terminal: Terminal) -> None:
        try:
            if not compat.response_finished(self):
                self._answer(terminal)
        finally:
            # Tornado's handler, request and connection refer to each other, so the handler is freed
            # by the cyclic collector; what it lets go of here is freed now instead, and each
            # collection has less to walk (the request, its parsed body, its terminal and answer).
            self.record = self.parsed = None
            if self.outcome is not None and not self.outcome.done():
                self.outcome.set_result(terminal)

    def _answer(self, terminal: Terminal) -> None:
        if not isinstance(terminal, Completed):
            return self.send_error_code(ServdError(terminal.code, terminal.message))
        encoded = terminal.payload
        if not isinstance(encoded, v2.Encoded):  # an endpoint without tensors: its JSON as BYTES
            assert self.parsed is not None
            encoded = v2.json_response(terminal.data_json, model=self.name, request=self.parsed)
        if encoded.header_length is not None:
            self.set_header(v2.HEADER_LENGTH, str(encoded.header_length))
        self.set_header("Content-Type", encoded.content_type)
        self.finish(encoded.body)

    def on_connection_close(self) -> None:
        super().on_connection_close()  # ends Tornado's wait for a body that will never arrive
        if self.record is not None and not self.record.done:
            self.daemon.cancel(self.record, "the client disconnected")
