"""Plain training and evaluation functions: AdamW + linear warmup / cosine decay, label
smoothing, augmentation on the trial's device, mixed precision and channels_last on GPU.

Nothing here knows about Ray or MLflow; :mod:`tuner.training.trainable` wraps these.
``hp`` is the ``train`` part of a sampled config (:class:`tuner.search_space.TrainHParams`
or anything with the same attributes: lr, weight_decay, warmup_epochs, batch_size,
label_smoothing, aug_rotation, aug_flip, aug_strength).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tuner import metrics


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the trial is failed with this message."""


@dataclass(frozen=True)
class EpochStats:
    """One training epoch: mean loss (nats), wall seconds, training throughput (images/s)."""

    train_loss: float
    seconds: float
    images_per_second: float


def pick_device(prefer_gpu: bool = True) -> torch.device:
    """The trial's device: the (Ray-assigned, hence visible) GPU when there is one, else CPU."""
    return torch.device("cuda" if prefer_gpu and torch.cuda.is_available() else "cpu")


def make_optimizer(model: nn.Module, hp) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and norm/scale parameters (1-D tensors)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": float(hp.weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=float(hp.lr))


def lr_factor(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base learning rate at optimiser ``step``: linear warmup from
    1/warmup_steps to 1, then cosine decay to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer, hp, *, steps_per_epoch: int, max_epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step warmup + cosine schedule over ``max_epochs`` epochs."""
    warmup = int(round(float(hp.warmup_epochs) * steps_per_epoch))
    total = steps_per_epoch * max_epochs
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup_steps=warmup, total_steps=total)
    )


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """Optimiser steps of one epoch (the last, partial batch is dropped when there are more)."""
    return max(n_images // batch_size, 1)


def augment(images: torch.Tensor, hp, generator: torch.Generator) -> torch.Tensor:
    """Random free-angle rotation (with probability ``hp.aug_strength`` when
    ``hp.aug_rotation``) and horizontal/vertical flips (each p=0.5 when ``hp.aug_flip``) of a
    batch (B, C, H, W), as one affine resampling on the images' device. Lensing images have
    no preferred orientation, so both keep the label."""
    if not (hp.aug_rotation or hp.aug_flip):
        return images
    b, device = images.shape[0], images.device
    uniform = torch.rand(b, 3, generator=generator, device=device)
    angle = torch.rand(b, generator=generator, device=device) * (2 * math.pi)
    if hp.aug_rotation:
        angle = torch.where(uniform[:, 0] < float(hp.aug_strength), angle, torch.zeros_like(angle))
    else:
        angle = torch.zeros_like(angle)
    sx = torch.ones(b, device=device)
    sy = torch.ones(b, device=device)
    if hp.aug_flip:
        sx = torch.where(uniform[:, 1] < 0.5, -sx, sx)
        sy = torch.where(uniform[:, 2] < 0.5, -sy, sy)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([cos * sx, -sin * sy, torch.zeros_like(cos)], 1),
         torch.stack([sin * sx, cos * sy, torch.zeros_like(cos)], 1)],
        1,
    ).to(images.dtype)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # Background of normalised lensing images is ~0, so zero padding of rotated corners is benign.
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def resize_batch(batch: torch.Tensor, img_size: int) -> torch.Tensor:
    """Resize (B, 1, H, W) to ``img_size`` (bilinear, antialiased when shrinking); returned
    unchanged when it already has that size. Training, evaluation and prediction all use it."""
    if batch.shape[-2:] == (img_size, img_size):
        return batch
    return F.interpolate(batch, size=(img_size, img_size), mode="bilinear", align_corners=False,
                         antialias=batch.shape[-1] > img_size)


def prepare_batch(images: torch.Tensor, device: torch.device, img_size: int) -> torch.Tensor:
    """Copy a CPU batch (B, 1, H, W) to ``device`` and resize to ``img_size`` if needed."""
    x = resize_batch(images.to(device, non_blocking=True).float(), img_size)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _autocast(device: torch.device):
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


# Losses are checked for NaN/inf every this many steps (and at the end of the epoch) in one
# host sync instead of one per step: a per-step `.item()` stalls a GPU's queue every step.
FINITE_CHECK_STEPS = 32


def _check_finite(pending: list[torch.Tensor], first_step: int, lr: float) -> torch.Tensor:
    """Sum (float64, on the losses' device) of the per-step losses ``pending``, which start at
    epoch step ``first_step``; raises :class:`NonFiniteLossError` naming the first bad one."""
    losses = torch.stack(pending)  # (k,)
    finite = torch.isfinite(losses)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0])
        raise NonFiniteLossError(
            f"training loss is {losses[bad].item()} at step {first_step + bad} of the epoch "
            f"(lr={lr:.3g})"
        )
    return losses.double().sum()


def train_one_epoch(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    hp,
    device: torch.device,
    img_size: int,
    generator: torch.Generator,
    aug_generator: torch.Generator,
    scaler: torch.amp.GradScaler | None = None,
) -> EpochStats:
    """One pass over ``images`` (N, 1, H, W) CPU float32 and ``labels`` (N,) int64 in a random
    order drawn from ``generator`` (CPU); ``aug_generator`` lives on ``device``.
    Raises :class:`NonFiniteLossError` naming the first NaN/inf loss, at most
    ``FINITE_CHECK_STEPS`` steps after it (before the epoch ends)."""
    model.train()
    n, bs = len(labels), int(hp.batch_size)
    steps = steps_per_epoch(n, bs)
    per_step = min(bs, n)  # every step sees a full batch (the last partial one is dropped)
    smoothing, lr = float(hp.label_smoothing), float(hp.lr)
    order = torch.randperm(n, generator=generator)
    total = torch.zeros((), dtype=torch.float64, device=device)
    pending: list[torch.Tensor] = []
    start = time.perf_counter()
    for step in range(steps):
        idx = order[step * bs:(step + 1) * bs]
        x = augment(prepare_batch(images[idx], device, img_size), hp, aug_generator)
        y = labels[idx].to(device, non_blocking=True)
        with _autocast(device):
            loss = F.cross_entropy(model(x), y, label_smoothing=smoothing)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        pending.append(loss.detach())
        if len(pending) == FINITE_CHECK_STEPS or step == steps - 1:
            total += _check_finite(pending, step + 1 - len(pending), lr)
            pending = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    seen = steps * per_step
    return EpochStats(float(total.item()) * per_step / seen, seconds, seen / max(seconds, 1e-9))


def train_epochs(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, hp, *, epochs: int, seed: int,
    img_size: int, device: torch.device = torch.device("cpu"),
) -> nn.Module:
    """Train ``model`` for ``epochs`` with AdamW + warmup/cosine outside any study (no tracking,
    no checkpoints): batch order seeded by ``seed``, augmentation by ``seed + 10_000``.
    Returns the model in eval mode."""
    optimizer = make_optimizer(model, hp)
    scheduler = make_scheduler(optimizer, hp, steps_per_epoch=steps_per_epoch(len(labels), hp.batch_size),
                               max_epochs=epochs)
    order = torch.Generator().manual_seed(seed)
    aug = torch.Generator(device=device).manual_seed(seed + 10_000)
    for _ in range(epochs):
        train_one_epoch(model, images, labels, optimizer=optimizer, scheduler=scheduler, hp=hp,
                        device=device, img_size=img_size, generator=order, aug_generator=aug)
    return model.eval()


@torch.no_grad()
def predict_proba(
    model: nn.Module, images: torch.Tensor, *, device: torch.device, img_size: int,
    batch_size: int = 256,
) -> np.ndarray:
    """Class probabilities (N, C) float64 for images (N, 1, H, W)."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = prepare_batch(images[start:start + batch_size], device, img_size)
        with _autocast(device):
            logits = model(x)
        out.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(out).double().numpy()


def cross_entropy_of_probs(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood (nats) of the true class; the validation loss."""
    return metrics.nll(probs, labels)
