"""Fixtures of the training tests: a tiny model, its train settings and separable data."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn


class TinyNet(nn.Module):
    """(B, 1, H, W) -> (B, 3) logits; a few hundred parameters, with a norm layer."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm(self.conv(x)))  # (B, 4, H, W)
        return self.head(h.mean(dim=(2, 3)))


def train_hparams(**overrides) -> SimpleNamespace:
    values = dict(lr=3e-3, weight_decay=0.01, warmup_epochs=1, batch_size=16, label_smoothing=0.0,
                  aug_rotation=True, aug_flip=True, aug_strength=0.5)
    values.update(overrides)
    return SimpleNamespace(**values)


@pytest.fixture
def tiny_model() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def separable_data() -> tuple[torch.Tensor, torch.Tensor]:
    """96 images (96, 1, 16, 16), min-max normalised as stored datasets are, whose bright
    square's size (2, 6 or 10 px) encodes the label (0, 1, 2)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(96) % 3
    images = torch.rand(96, 1, 16, 16, generator=g) * 0.3
    for i, label in enumerate(labels.tolist()):
        side = 2 + 4 * label
        images[i, 0, 3:3 + side, 3:3 + side] += 1.0
    lo, hi = images.amin(dim=(1, 2, 3), keepdim=True), images.amax(dim=(1, 2, 3), keepdim=True)
    return ((images - lo) / (hi - lo)).float(), labels.long()
