"""The common predictive interface shared by every uncertainty method.

Every method maps images (N, 1, H, W) to a :class:`Predictive`: the predictive class
probabilities (N, C) and, for sampling methods (MC dropout, ensembles, Laplace sampling), the
per-sample probabilities (S, N, C) from which the epistemic part (mutual information) is read.
Entropies are in nats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from tuner.models.io import model_device, model_dtype

_EPS = 1e-12


@dataclass(frozen=True)
class Predictive:
    """Output of an uncertainty method.

    probs: (N, C) predictive class probabilities, rows sum to 1.
    samples: (S, N, C) member/sample probabilities whose mean is ``probs``, or None for
        deterministic methods.
    forward_passes: network forward passes spent per image (cost measure).
    """

    probs: torch.Tensor
    samples: torch.Tensor | None = None
    forward_passes: int = 1

    def entropy(self) -> torch.Tensor:
        """Predictive entropy H[E p] (N,), nats."""
        return predictive_entropy(self.probs)

    def mutual_information(self) -> torch.Tensor:
        """Mutual information between label and model (N,), nats; zeros when not sampled."""
        if self.samples is None:
            return torch.zeros(self.probs.shape[0], dtype=self.probs.dtype)
        return mutual_information(self.samples)


class UncertaintyMethod(Protocol):
    """Anything with ``predict(images) -> Predictive``."""

    def predict(self, images: torch.Tensor) -> Predictive: ...


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of each row of ``probs`` (N, C) -> (N,), nats."""
    p = probs.clamp_min(_EPS)
    return -(probs * p.log()).sum(-1)


def mutual_information(samples: torch.Tensor) -> torch.Tensor:
    """BALD mutual information of sample probabilities (S, N, C) -> (N,), nats:
    entropy of the mean minus the mean entropy (>= 0 up to rounding)."""
    if samples.ndim != 3:
        raise ValueError(f"samples must be (S, N, C), got shape {tuple(samples.shape)}")
    total = predictive_entropy(samples.mean(0))
    aleatoric = predictive_entropy(samples).mean(0)
    return (total - aleatoric).clamp_min(0.0)


@torch.no_grad()
def collect_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits (N, C) of ``model`` in eval mode on ``images`` (N, 1, H, W), float32 on CPU.

    Images may be a memory-mapped CPU tensor; batches are moved to the model's device.
    The model's train/eval state is restored afterwards.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    device, dtype = model_device(model), model_dtype(model)
    was_training = model.training
    model.eval()
    try:
        out = [
            model(images[i : i + batch_size].to(device, dtype)).float().cpu()
            for i in range(0, images.shape[0], batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


class Deterministic:
    """Plain softmax of one trained model: the baseline every method is compared with."""

    def __init__(self, model: nn.Module, batch_size: int = 256):
        self.model = model
        self.batch_size = batch_size

    def predict(self, images: torch.Tensor) -> Predictive:
        logits = collect_logits(self.model, images, self.batch_size)
        return Predictive(probs=logits.softmax(-1), forward_passes=1)
