"""The benchmark model: a 256-1024-1024-16 MLP with fixed random weights, batched.

Inputs are JSON lists of 256 numbers; outputs lists of 16. `forward_json` is what servd calls
and what the benchmark calls in-process, so both pay the same list-to-tensor conversion.
"""

from __future__ import annotations

import itertools

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
