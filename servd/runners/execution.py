"""A job's call, on the worker thread that runs it: isolation, streams, tensors, encoding.

Worker thread only (any runner's: the pool's threads, a Ray replica's actor). Nothing here touches
a queue, a request or the loop: results go back through the `emit` callback and the returned
BatchResult. A failed batch is retried in halves so one bad input fails alone; out-of-memory
halves the rows; a generator's values are encoded here, once, as JSON text.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

from servd.inputs import declared, jsontext, tensors
from servd.inputs.validation import InvalidInput, Unchecked
from servd.runners import batch_rows
from servd.runners.devices import is_oom, loaded_torch, sync_torch_threads
from servd.runners.seam import (
    BatchContractError,
    BatchResult,
    CancelledBeforeStart,
    Job,
    NotEncodable,
    NotJSON,
    Outcome,
)

MAX_NESTING_MEASURED = 100_000


def execute(job: Job, emit: Callable[[int, list[str]], None]) -> BatchResult:
    """Run a job's inputs, isolating failures: a failed batch is retried in halves."""
    started = time.perf_counter()
    oom_sizes: list[int] = []
    sync_torch_threads()
    with _inference_mode():
        if job.tensors is not None:
            outcomes = _run_isolating(job, job.inputs, 0, emit, oom_sizes)
            _reply(job.inputs, outcomes)
        elif any(type(value) is Unchecked for value in job.inputs):
            outcomes = _check_then_run(job, emit, oom_sizes)
        else:
            outcomes = _run_isolating(job, job.inputs, 0, emit, oom_sizes)
    return BatchResult(outcomes, time.perf_counter() - started, oom_sizes)


def _reply(inputs: list[tensors.TensorInput], outcomes: list[Outcome]) -> None:
    """Each tensor request's outputs encoded as its transport wants them, here on the worker."""
    for request, outcome in zip(inputs, outcomes, strict=True):
        if outcome.error is not None:
            continue
        try:
            encoded = request.reply(outcome.payload)
        except (tensors.TensorError, TypeError, ValueError) as exc:
            outcome.error, outcome.payload = NotJSON(f"servd could not encode the outputs: {exc}"), None
            continue
        if isinstance(encoded, str):
            outcome.data_json, outcome.payload = encoded, None
        else:
            outcome.data_json, outcome.payload = "null", encoded


Emit = Callable[[int, list[str]], None]


def _check_then_run(job: Job, emit: Emit, oom_sizes: list[int]) -> list[Outcome]:
    """Check the inputs admitted unchecked (validation.py: too large to check on the loop), then
    call the model with those that pass; the others end with InvalidInput, never seen by it."""
    outcomes = [Outcome() for _ in job.inputs]
    passed: list[Any] = []
    positions: list[int] = []  # where each of `passed` stands in job.inputs
    for position, value in enumerate(job.inputs):
        if type(value) is Unchecked:
            problem = value.check.problem(value.data)
            if problem is not None:
                outcomes[position] = Outcome(error=InvalidInput(problem))
                continue
            value = value.data
        passed.append(value)
        positions.append(position)
    if passed:
        ran = _run_isolating(job, passed, 0, _emit_at(emit, positions), oom_sizes)
        for position, outcome in zip(positions, ran, strict=True):
            outcomes[position] = outcome
    return outcomes


def _emit_at(emit: Emit, positions: list[int]) -> Emit:
    """`emit` for a call on some of the job's inputs: partials go to the inputs' own positions."""
    if len(positions) == positions[-1] + 1:  # all of them, in order
        return emit

    def emit_at(offset: int, texts: list[str]) -> None:
        for index, text in enumerate(texts):
            emit(positions[offset + index], [text])

    return emit_at


def _run_isolating(job: Job, inputs: list[Any], offset: int, emit: Emit, oom_sizes: list[int]) -> list[Outcome]:
    result = _attempt(job, inputs, offset, emit)
    return result if isinstance(result, list) else _isolate(job, inputs, offset, emit, oom_sizes, result)


def _isolate(
    job: Job, inputs: list[Any], offset: int, emit: Emit, oom_sizes: list[int], error: Exception
) -> list[Outcome]:
    """`inputs` failed together with `error`: retry in halves until the failing ones fail alone.

    If both halves fail with the very same error (type and message) it isn't one input's fault
    (a broken model, a missing file): every input fails with it, after 3 calls instead of 2n-1.
    Out-of-memory is always split further, since smaller batches are its cure.
    """
    oom = is_oom(error)
    if oom and len(inputs) == 1 and job.tensors is not None and job.tensors.batched and inputs[0].rows > 1:
        error.__traceback__ = None
        oom_sizes.append(inputs[0].rows)
        return [_halve_rows(job, inputs[0], offset, emit, oom_sizes)]
    if len(inputs) == 1 or isinstance(error, BatchContractError):
        return [Outcome(error=error) for _ in inputs]
    if oom:
        oom_sizes.append(_size(job, inputs))
        # The traceback's frames hold the failed call's tensors (activations): drop them, or the
        # halves run out of memory too, with the whole batch's memory still allocated.
        error.__traceback__ = None
    middle = len(inputs) // 2 if job.tensors is None else batch_rows.middle(inputs)
    parts = ((inputs[:middle], offset), (inputs[middle:], offset + middle))
    results = [_attempt(job, part, at, emit) for part, at in parts]
    if not oom and all(isinstance(r, Exception) and _same_error(r, error) for r in results):
        return [Outcome(error=error) for _ in inputs]
    outcomes: list[Outcome] = []
    for (part, at), result in zip(parts, results, strict=True):
        outcomes += result if isinstance(result, list) else _isolate(job, part, at, emit, oom_sizes, result)
    return outcomes


def _halve_rows(job: Job, request: tensors.TensorInput, offset: int, emit: Emit, oom_sizes: list[int]) -> Outcome:
    """One request of several rows ran out of memory alone: run its halves (each halved again if
    need be) and join their outputs, so a request that fits in pieces still completes."""
    parts = [_run_isolating(job, [half], offset, emit, oom_sizes)[0] for half in batch_rows.halve_rows(request)]
    failed = next((part for part in parts if part.error is not None), None)
    if failed is not None:
        return failed
    return Outcome(
        payload=batch_rows.join_rows([part.payload for part in parts]),
        run_s=sum(part.run_s for part in parts),
        batch_size=max(part.batch_size for part in parts),
    )


def _size(job: Job, inputs: list[Any]) -> int:
    """A call's batch size: its requests, or on a stacked tensor endpoint its rows."""
    if job.tensors is not None and job.tensors.batched:
        return sum(request.rows for request in inputs)
    return len(inputs)


def _attempt(job: Job, inputs: list[Any], offset: int, emit: Emit) -> list[Outcome] | Exception:
    """One call: its outcomes, or the exception to isolate (a stream that already sent partials fails as is)."""
    streamed = False

    def tracked_emit(at: int, texts: list[str]) -> None:
        nonlocal streamed
        streamed = True
        emit(at, texts)

    started = time.perf_counter()
    try:
        outcomes = _call(job, inputs, offset, tracked_emit)
    except Exception as exc:  # noqa: BLE001 - whatever user code raises is isolated and reported
        return [Outcome(error=exc) for _ in inputs] if streamed else exc
    run_s, size = time.perf_counter() - started, _size(job, inputs)
    for outcome in outcomes:
        outcome.run_s = run_s
        outcome.batch_size = size
    return outcomes


def _same_error(a: BaseException, b: BaseException) -> bool:
    return type(a) is type(b) and str(a) == str(b)


def _call(job: Job, inputs: list[Any], offset: int, emit: Callable[[int, list[str]], None]) -> list[Outcome]:
    if not job.is_wanted():
        return [Outcome(error=CancelledBeforeStart()) for _ in inputs]
    model = job.model
    if job.tensors is not None:
        try:
            outputs = batch_rows.run(model.call, inputs, job.tensors, _handoff(job.tensors, model.device))
        except declared.OutputMismatch as exc:
            raise BatchContractError(str(exc)) from None
        return [Outcome(payload=o) for o in outputs]
    if not job.batched:
        value = model.call(inputs[0])
        if model.streams:
            return [_last_of_stream(value, offset, emit, job)]
        return [_encode(value)]
    values = model.call(list(inputs))
    if model.streams:
        return _batched_stream(values, len(inputs), offset, emit, job)
    return [_encode(v) for v in _checked_batch(values, len(inputs))]


def _handoff(layout: declared.Layout, device: str) -> Callable[[tensors.Arrays], Any]:
    """What the entrypoint is handed: the arrays, or (tensors.as: torch) torch tensors on its device."""
    if layout.spec.as_ != "torch":
        return _same
    import torch  # only endpoints that asked for torch tensors need it

    def to_torch(arrays: tensors.Arrays) -> dict[str, Any]:
        handed: dict[str, Any] = {}
        for name, array in arrays.items():
            if array.dtype == object:  # BYTES: torch has no such tensor
                handed[name] = array
                continue
            if not array.flags.writeable:  # torch warns about (and can't guard) a read-only buffer
                array = array.copy()
            handed[name] = torch.from_numpy(array).to(device)
        return handed

    return to_torch


def _same(arrays: tensors.Arrays) -> tensors.Arrays:
    return arrays


def _last_of_stream(
    stream: Generator[Any, None, None], offset: int, emit: Callable[[int, list[str]], None], job: Job
) -> Outcome:
    last = Outcome(data_json="null")
    with contextlib.closing(stream):
        for value in stream:
            last = _encode(value)
            if last.error is not None:
                return last
            assert last.data_json is not None
            emit(offset, [last.data_json])
            if not job.is_wanted():
                break
    return last


def _batched_stream(
    stream: Generator[Any, None, None], size: int, offset: int, emit: Callable[[int, list[str]], None], job: Job
) -> list[Outcome]:
    last = [Outcome(data_json="null") for _ in range(size)]
    with contextlib.closing(stream):
        for values in stream:
            last = [_encode(v) for v in _checked_batch(values, size)]
            emit(offset, [o.data_json if o.data_json is not None else "null" for o in last])
            if not job.is_wanted():
                break
    return last


def _checked_batch(values: Any, size: int) -> list[Any]:
    if not isinstance(values, (list, tuple)):
        raise BatchContractError(
            f"a batched entrypoint must return a list of {size} results (one per input), got {type(values).__name__}"
        )
    if len(values) != size:
        raise BatchContractError(
            f"a batched entrypoint must return one result per input: expected {size}, got {len(values)}"
        )
    return list(values)


def _encode(value: Any) -> Outcome:
    try:
        return Outcome(data_json=jsontext.dumps(value))
    except (TypeError, ValueError) as exc:
        return Outcome(error=NotJSON(f"the entrypoint returned a value that is not JSON: {exc}"))
    except RecursionError:
        depth = _nesting(value)
        deep = f"more than {MAX_NESTING_MEASURED}" if depth > MAX_NESTING_MEASURED else str(depth)
        return Outcome(error=NotEncodable(f"it is nested {deep} levels deep, more than the JSON encoder can take"))


def _nesting(value: Any) -> int:
    """Levels of lists, tuples and dicts in `value`, counted without recursion (up to a cap)."""
    level, depth = [value], 0
    while level and depth <= MAX_NESTING_MEASURED:
        below: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                below += item.values()
            elif isinstance(item, (list, tuple)):
                below += item
        level = [item for item in below if isinstance(item, (dict, list, tuple))]
        depth += 1
    return depth


@contextlib.contextmanager
def _inference_mode() -> Iterator[None]:
    torch = loaded_torch()
    if torch is None:
        yield
        return
    with torch.inference_mode():
        yield
