"""The benchmark model: a 256-1024-1024-16 MLP with fixed random weights, batched.

Inputs are JSON lists of 256 numbers; outputs lists of 16. `forward_json` is what servd calls
and what the benchmark calls in-process, so both pay the same list-to-tensor conversion.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
from torch import nn

SIZES = (256, 1024, 1024, 16)


class MLP:
    def __init__(self, device: str = "cpu", seed: int = 0) -> None:
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(SIZES)):
            layers.append(nn.Linear(a, b))
            if i < len(SIZES) - 2:
                layers.append(nn.ReLU())
        self.device = torch.device(device)
        self.net = nn.Sequential(*layers).to(self.device).eval()

    def __call__(self, inputs: list[list[float]]) -> list[list[float]]:
        x = torch.tensor(inputs, dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            return self.net(x).tolist()  # type: ignore[no-any-return]


class MLPTensors(MLP):
    """The same model on declared tensors: x FP32 [-1, 256] in, y FP32 [-1, 16] out, rows stacked
    by servd (tensors: in servd.yaml). Takes numpy arrays or, with tensors.as: torch, tensors."""

    def __call__(self, inputs: dict[str, Any]) -> dict[str, Any]:  # type: ignore[override]
        x = inputs["x"]
        if not isinstance(x, torch.Tensor):
            x = torch.from_numpy(x).to(self.device)
        with torch.inference_mode():
            return {"y": self.net(x)}
