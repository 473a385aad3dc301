"""One call for a batch of tensor requests: rows stacked in, outputs split back, halves on failure.

Pure functions over numpy arrays, run on a worker thread (runners/local.py); nothing here
touches the loop or a queue. On a batched endpoint the requests' inputs are concatenated along
the first dimension (the rows), the entrypoint is called once, and each output is split back by
the requests' row counts (Triton's dynamic batching). A failed batch is halved on a request
boundary (`middle`), and a request too large to run alone is halved on its rows (`halve_rows`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from servd.inputs.declared import Layout, OutputMismatch, outputs_of
from servd.inputs.tensors import Arrays, TensorInput


def run(
    call: Callable[[Any], Any], requests: Sequence[TensorInput], layout: Layout, handoff: Callable[[Arrays], Any]
) -> list[Arrays]:
    """Call the entrypoint once for `requests`: stacked along the rows on a batched endpoint
    (an unbatched one runs one request a call); returns each request's outputs."""
    spec = layout.spec
    arrays = stack(requests, [t.name for t in spec.inputs]) if layout.batched else requests[0].arrays
    outputs = outputs_of(call(handoff(arrays)), spec.outputs)
    if not layout.batched:
        return [outputs]
    return split(outputs, [r.rows for r in requests])


def stack(requests: Sequence[TensorInput], names: Sequence[str]) -> Arrays:
    """One array per input: the requests' arrays concatenated along the first dimension."""
    if len(requests) == 1:
        return dict(requests[0].arrays)
    return {name: np.concatenate([r.arrays[name] for r in requests]) for name in names}


def split(outputs: Arrays, rows: Sequence[int]) -> list[Arrays]:
    """Each request's rows of every output, in order (views, not copies)."""
    total = sum(rows)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            got = "no rows (a scalar)" if array.ndim == 0 else f"{array.shape[0]} rows"
            raise OutputMismatch(
                f"output {name!r} has {got} for {total} input rows; "
                "a batched tensor endpoint returns one row per input row"
            )
    parts: list[Arrays] = []
    start = 0
    for count in rows:
        parts.append({name: array[start : start + count] for name, array in outputs.items()})
        start += count
    return parts


# -- bisection on row boundaries ---------------------------------------------------------------


def middle(requests: Sequence[TensorInput]) -> int:
    """Where to halve a failed batch: the request boundary nearest half its rows (at least one
    request on each side), so the halves carry about equal work and no request is cut."""
    total = sum(r.rows for r in requests)
    best, best_gap, seen = 1, total, 0
    for index, request in enumerate(requests[:-1], start=1):
        seen += request.rows
        gap = abs(2 * seen - total)
        if gap < best_gap:
            best, best_gap = index, gap
    return best


def halve_rows(request: TensorInput) -> tuple[TensorInput, TensorInput]:
    """One request of several rows that ran out of memory alone: its first and second half."""
    cut = request.rows // 2
    first = {name: array[:cut] for name, array in request.arrays.items()}
    second = {name: array[cut:] for name, array in request.arrays.items()}
    return (
        TensorInput(first, request.reply, cut),
        TensorInput(second, request.reply, request.rows - cut),
    )


def join_rows(parts: Sequence[Arrays]) -> Arrays:
    """The outputs of a request's halves, joined back along the rows."""
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
