"""The Open Inference Protocol (KServe v2) over HTTP: /v2, /v2/health/*, /v2/models/{name}/...

Each endpoint is a model of version 1. Inference goes through the same queue, limits, tokens
and metrics as everything else: the Infer handler only translates (v2_codec) to and from a
Request; its checks, limits and Sink are lifecycle.RequestLifecycle's. An endpoint with
`tensors:` gets the request's arrays (JSON or binary); one without takes one BYTES input `data`
holding JSON text and answers with one BYTES output `data` holding its JSON result. Errors are
the protocol's `{"error": "..."}` (V2_ERRORS) with servd's statuses, except that invalid input
is 400 as the protocol has it. Loop thread only.
"""

from __future__ import annotations

import functools
from typing import Any

from servd import __version__
from servd.core.endpoint import Endpoint
from servd.core.events import Completed, Terminal
from servd.core.request import Request
from servd.errors import ErrorCode, ServdError
from servd.inputs import tensors
from servd.protocols import v2_codec as v2
from servd.web.handlers.base import ErrorShape, JSONHandler
from servd.web.handlers.lifecycle import RequestLifecycle

# The v2 protocol's error answers: {"error": message}, invalid input 400 where servd says 422.
V2_ERRORS = ErrorShape(lambda code, message, param: v2.error_body(message), {ErrorCode.INVALID_INPUT: 400})


class V2Handler(JSONHandler):
    """Errors in the v2 shape, whoever makes them (a refusal, the web guard, Tornado)."""

    errors = V2_ERRORS

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


class ServerMetadata(V2Handler):
    def get(self) -> None:
        self.answer_with(lambda: v2.server_metadata(__version__))


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
        self.answer_with(lambda: v2.model_metadata(self.model(name, version).spec))


class ModelReady(V2Handler):
    def get(self, name: str, version: str | None = None) -> None:
        def build() -> dict[str, Any]:
            endpoint = self.model(name, version)
            if not endpoint.accepting or not endpoint.instances.live():
                raise ServdError(ErrorCode.UNAVAILABLE, f"model {name!r} is not ready (loading or draining)")
            return {"name": name, "ready": True}

        self.answer_with(build)


class ModelConfig(V2Handler):
    def get(self, name: str, version: str | None = None) -> None:
        def build() -> dict[str, Any]:
            endpoint = self.model(name, version)
            return v2.model_config(endpoint.spec, endpoint.instances.devices())

        self.answer_with(build)


class Statistics(V2Handler):
    """The statistics extension: every model's, or one's."""

    def get(self, name: str | None = None, version: str | None = None) -> None:
        def build() -> dict[str, Any]:
            endpoints = [self.model(name, version)] if name else list(self.daemon.endpoints.values())
            return {"model_stats": [v2.model_statistics(e.name, e.stats) for e in endpoints]}

        self.answer_with(build)


class Infer(V2Handler, RequestLifecycle):
    """POST /v2/models/{name}[/versions/1]/infer, JSON or with binary tensor data."""

    def initialize(self, daemon: Any) -> None:
        super().initialize(daemon)
        self.parsed: v2.InferRequest | None = None

    def target(self) -> str:
        name = self.path_kwargs["name"]
        return self.open_endpoint(self.model(name, self.path_kwargs.get("version")), f"model {name!r}")

    def build(self) -> Request:
        assert self.endpoint_name is not None
        endpoint = self.model(self.endpoint_name, None)
        try:
            parsed = self.parsed = v2.parse_infer(self.body, self.request.headers.get(v2.HEADER_LENGTH))
            data = self._data(endpoint, parsed)
        except v2.V2Error as exc:
            raise ServdError(ErrorCode.BAD_REQUEST, str(exc)) from None
        return self.new_request(data, progress=False, priority=parsed.priority, deadline_s=parsed.timeout_s)

    def _data(self, endpoint: Endpoint, parsed: v2.InferRequest) -> Any:
        declared = endpoint.spec.tensors
        if declared is None:
            v2.check_outputs(parsed.outputs, [v2.JSON_TENSOR])
            return v2.json_data(parsed, self.daemon.spec.server.max_depth)
        v2.check_outputs(parsed.outputs, [t.name for t in declared.outputs])
        datatypes = {t.name: t.datatype for t in declared.outputs}
        reply = functools.partial(v2.infer_response, model=endpoint.name, request=parsed, datatypes=datatypes)
        return tensors.TensorInput(parsed.inputs, reply)

    def answer(self, request: Request, terminal: Terminal) -> None:
        if not isinstance(terminal, Completed):
            return self.send_error_code(ServdError(terminal.code, terminal.message))
        encoded = terminal.encoded
        if not isinstance(encoded, v2.Encoded):  # an endpoint without tensors: its JSON as BYTES
            assert self.parsed is not None and self.endpoint_name is not None
            encoded = v2.json_response(terminal.data_json, model=self.endpoint_name, request=self.parsed)
        if encoded.header_length is not None:
            self.set_header(v2.HEADER_LENGTH, str(encoded.header_length))
        self.set_header("Content-Type", encoded.content_type)
        self.finish(encoded.body)

    def release(self) -> None:
        super().release()
        self.parsed = None  # its tensors can be large
