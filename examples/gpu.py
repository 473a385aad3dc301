"""Entrypoints for checks on a real GPU (tests/test_gpu.py runs them where torch sees CUDA).

`WhereAmI` reports where its tensors live; `MemoryHungry` needs a fifth of the GPU's free memory
per input, held across the call the way a model's activations are, so a batch of 5 or more runs
out of memory for real and a batch of 4 fits.
"""

from __future__ import annotations

from typing import Any

import torch


class WhereAmI:
    """Returns the device of a tensor made from the input on the instance's device."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = torch.device(device)

    def __call__(self, data: Any) -> dict[str, Any]:
        x = torch.tensor([float(data)], device=self.device)
        return {"device": str(x.device), "value": (x * 2).item()}


class MemoryHungry:
    """Batched: allocates a fifth of the free GPU memory (measured at load) per input and keeps it to the end."""

    SHARE = 5

    def __init__(self, device: str = "cuda") -> None:
        self.device = torch.device(device)
        torch.cuda.empty_cache()  # memory cached by earlier models in this process counts as free
        free, _total = torch.cuda.mem_get_info(self.device)
        self.chunk_bytes = free // self.SHARE

    def __call__(self, items: list[Any]) -> list[dict[str, Any]]:
        held = []  # a named local, like a model's activations: the frame keeps it if the call raises
        for _ in items:
            held.append(torch.empty(self.chunk_bytes, dtype=torch.uint8, device=self.device))
        return [{"value": item, "batch": len(items), "held": len(held)} for item in items]
