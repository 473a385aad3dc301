"""input_schema checks, at a cost the event loop can afford, with messages of a bounded size.

jsonschema is pure Python and walks every value: about 3 us a value (a 256-float list: 0.8 ms;
a 1,000,000-item list: 3.4 s, longer when it fails, since each error quotes the value it failed
on). On the loop that stalls every endpoint, so only data of at most INLINE_BYTES on the wire is
checked at admission and refused there with invalid_input. Larger data is admitted unchecked,
wrapped in `Unchecked`, and checked on a worker thread just before its call, on the endpoint's
own slot (runners.execution): a request that fails then ends with invalid_input instead of being
refused, and the model never sees it. Either way the check is the same, with the schema in force
when the request was admitted.

No import of tornado or torch here: pure functions, tested without a loop.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema

from servd.errors import ErrorCode, ServdError

INLINE_BYTES = 8192  # checked on the loop up to this size: about 2.5 ms of jsonschema at most
MAX_MESSAGE_CHARS = 500
QUOTED_MESSAGE_CHARS = 200  # jsonschema's own message, which quotes the value, is kept up to this
ERRORS_WEIGHED = 20  # best_match ranks at most this many errors: failing data stops the check early


class InvalidInput(Exception):
    """Data failed input_schema on the worker (it was too large to check at admission)."""


class InputCheck:
    """One endpoint's compiled input_schema."""

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self._validator = jsonschema.Draft202012Validator(dict(schema))

    def admit(self, data: Any, size: int) -> Any:
        """What to queue for `data` of `size` characters on the wire: the data itself once it
        passed, or `Unchecked` data when checking it here would stall the loop; raises
        invalid_input for data that fails."""
        if size > INLINE_BYTES:
            return Unchecked(data, self)
        problem = self.problem(data)
        if problem is not None:
            raise ServdError(ErrorCode.INVALID_INPUT, problem)
        return data

    def problem(self, data: Any) -> str | None:
        """Why `data` fails the schema, in at most MAX_MESSAGE_CHARS, or None when it passes."""
        try:
            error = jsonschema.exceptions.best_match(
                itertools.islice(self._validator.iter_errors(data), ERRORS_WEIGHED)
            )
        except RecursionError:
            return (
                "data is nested too deeply to be checked against input_schema (RecursionError in the "
                "validator); lower server.max_depth"
            )
        return None if error is None else _clip(describe(error))


@dataclass(slots=True, frozen=True)
class Unchecked:
    """Data admitted before its input_schema check, which runs on the worker before the call."""

    data: Any
    check: InputCheck


def describe(error: jsonschema.ValidationError) -> str:
    """`data['a'][0]: <what failed>`: jsonschema's message when it is short; when it would quote a
    large value, what the value is (a list of 1000000 items) and the keyword it failed instead."""
    where = "data" + "".join(f"[{_short(repr(p), 40)}]" for p in error.absolute_path)
    if len(error.message) <= QUOTED_MESSAGE_CHARS:
        return f"{where}: {error.message}"
    schema_path = "/".join(str(p) for p in error.absolute_schema_path)
    rule = _short(json.dumps(error.validator_value, default=repr), 80)
    return f"{where}: {_kind(error.instance)} fails {error.validator}: {rule} (input_schema at #/{schema_path})"


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return f"an object of {len(value)} keys"
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    return f"a value of type {type(value).__name__}"


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _clip(text: str) -> str:
    return _short(text, MAX_MESSAGE_CHARS)
