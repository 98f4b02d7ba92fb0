"""Monte Carlo dropout (Gal & Ghahramani 2016): T stochastic forward passes with only the
dropout layers in train mode; normalisation layers and everything else stay in eval mode, so
batch statistics are never updated.

timm's fused attention reads its own module's ``training`` flag for attention dropout, so only
``nn.Dropout``-type layers (projection, MLP and head dropout) are sampled; stochastic depth
(DropPath) is not dropout and stays off.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from tuner.models.io import model_device, model_dtype
from tuner.uncertainty.predictive import Predictive

_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def dropout_layers(model: nn.Module) -> list[nn.Module]:
    """The model's dropout layers with a non-zero rate."""
    return [m for m in model.modules() if isinstance(m, _DROPOUT_TYPES) and m.p > 0]


def require_dropout(model: nn.Module) -> list[nn.Module]:
    """The dropout layers, or ValueError when there is none to sample."""
    layers = dropout_layers(model)
    if not layers:
        raise ValueError(
            "MC dropout needs at least one dropout layer with p > 0; this model has none "
            "(build it with drop_rate > 0)"
        )
    return layers


@contextlib.contextmanager
def dropout_active(model: nn.Module):
    """Context: model in eval mode except its dropout layers; previous modes restored on exit."""
    layers = require_dropout(model)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    for m in layers:
        m.train()
    try:
        yield layers
    finally:
        for m, mode in modes.items():
            m.training = mode


@torch.no_grad()
def mc_dropout_predict(
    model: nn.Module, images: torch.Tensor, T: int = 20, *, seed: int = 0, batch_size: int = 256
) -> Predictive:
    """T stochastic passes over ``images`` (N, 1, H, W) -> Predictive with samples (T, N, C).

    Randomness comes from a forked RNG seeded with ``seed``, so results repeat and the global
    torch RNG is left untouched.
    """
    if T < 1:
        raise ValueError(f"T (number of MC dropout passes) must be >= 1, got {T}")
    device = model_device(model)
    devices = [device] if device.type == "cuda" else []
    with dropout_active(model), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        batches = []
        for i in range(0, images.shape[0], batch_size):
            x = images[i : i + batch_size].to(device, model_dtype(model))
            batches.append(torch.stack([model(x).float().softmax(-1).cpu() for _ in range(T)]))
    samples = torch.cat(batches, dim=1)  # (T, N, C)
    return Predictive(probs=samples.mean(0), samples=samples, forward_passes=T)


class MCDropout:
    """Method wrapper: ``MCDropout(model, T).predict(images)``."""

    def __init__(self, model: nn.Module, T: int = 20, seed: int = 0, batch_size: int = 256):
        require_dropout(model)
        self.model, self.T, self.seed, self.batch_size = model, T, seed, batch_size

    def predict(self, images: torch.Tensor) -> Predictive:
        return mc_dropout_predict(self.model, images, self.T, seed=self.seed, batch_size=self.batch_size)
