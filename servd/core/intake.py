"""What an endpoint accepts as a request's data, decided on the loop before anything is queued.

Loop thread only. An endpoint with `input_schema` checks small data here and marks large data
for its worker (inputs.validation); one with declared `tensors` turns the data into a checked
TensorInput whose rows must fit one call. Either way a refusal is a ServdError (invalid_input)
and nothing is queued. Rebuilt from the spec on every retune.
"""

from __future__ import annotations

from typing import Any

from servd.config.spec import EndpointSpec
from servd.errors import ErrorCode, ServdError
from servd.inputs import declared, tensors
from servd.inputs.validation import InputCheck


class Intake:
    """An endpoint's rules for data, from its spec: a schema check or a tensor layout (or neither)."""

    __slots__ = ("layout", "max_rows", "validator")

    def __init__(self, spec: EndpointSpec) -> None:
        self.validator = None if spec.input_schema is None else InputCheck(spec.input_schema)
        self.layout = None if spec.tensors is None else declared.Layout(spec.tensors, spec.batch is not None)
        self.max_rows = spec.batch.max_size if spec.batch is not None else None

    def admit(self, data: Any, size: int) -> Any:
        """The data as the worker will get it; raises ServdError (invalid_input) for what it refuses."""
        if self.validator is not None:  # large data is checked on the worker instead (validation.py)
            return self.validator.admit(data, size)
        if self.layout is not None:
            return self._tensors(self.layout, data)
        return data

    def _tensors(self, layout: declared.Layout, data: Any) -> tensors.TensorInput:
        """Declared tensors, checked before anything is queued; a batched request's rows must fit a call."""
        try:
            tensor = declared.admit(layout, data)
        except tensors.TensorError as exc:
            raise ServdError(ErrorCode.INVALID_INPUT, str(exc)) from None
        if layout.batched and self.max_rows is not None and tensor.rows > self.max_rows:
            raise ServdError(
                ErrorCode.INVALID_INPUT,
                f"{tensor.rows} rows; batch.max_size={self.max_rows} rows is the most one call takes",
            )
        return tensor
