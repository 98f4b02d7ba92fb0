"""Plain training and evaluation functions: AdamW + linear warmup / cosine decay, label
smoothing, augmentation on the trial's device, mixed precision and channels_last on GPU.

On a GPU a trial keeps its data on the device: :func:`to_device` moves the train and
validation arrays once (through pinned host memory), :func:`prepare_model` places the model
(channels_last, cuDNN autotuning for convolutional families, optional ``torch.compile``),
:func:`make_optimizer` picks fused AdamW, and :func:`train_one_epoch` then draws the batch
order and the augmentation on the device and never waits for it inside the step loop. With
CPU tensors everything behaves as it always did (same batches from the same seeds).

Nothing here knows about Ray or MLflow; :mod:`tuner.training.trainable` wraps these.
``hp`` is the ``train`` part of a sampled config (:class:`tuner.study.search_space.TrainHParams`
or anything with the same attributes: lr, weight_decay, warmup_epochs, batch_size,
label_smoothing, aug_rotation, aug_flip, aug_strength).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tuner import metrics
from tuner.models.io import autocast, deliberate_sync, prepare_batch


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


# Host rows staged through pinned memory per copy in to_device: bounds the page-locked memory
# a trial holds (a whole Model I split is GBs, and several trials share a node) while the
# copy of one chunk to the GPU overlaps the staging of the next.
PIN_CHUNK_BYTES = 256 << 20


def _copy_through_pinned(src: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``src`` (host, any dtype) as a new ``dtype`` tensor on ``device``, copied in chunks of
    leading-axis rows, each converted into a pinned host buffer, then sent without blocking."""
    out = torch.empty(src.shape, dtype=dtype, device=device)
    row_bytes = max(src[:1].numel(), 1) * out.element_size()
    rows = max(PIN_CHUNK_BYTES // row_bytes, 1)
    for start in range(0, len(src), rows):
        part = src[start:start + rows]
        staged = torch.empty(part.shape, dtype=dtype, pin_memory=True)
        staged.copy_(part)
        # The caching host allocator records this copy on the stream, so `staged` is not reused
        # before the transfer has finished although it is released at the next iteration.
        out[start:start + rows].copy_(staged, non_blocking=True)
    return out


def to_device(images: torch.Tensor, labels: torch.Tensor,
              device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's ``images`` (N, 1, H, W) and ``labels`` (N,) on ``device``, once per trial.

    On CUDA: images as float32 and labels as int64 on the device, copied through pinned host
    memory without blocking the host (later kernels on the same stream see the data). The
    device then holds N x H x W x 4 bytes of images. On CPU: the inputs themselves, unchanged
    and uncopied (in a trial they are zero-copy views of Ray's object store).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return images, labels
    return (_copy_through_pinned(images, torch.float32, device),
            _copy_through_pinned(labels, torch.int64, device))


def prepare_model(model: nn.Module, device: torch.device | str, *, compile: bool = False,
                  convolutional: bool = False) -> nn.Module:
    """``model`` ready to train on ``device``; call before :func:`make_optimizer`.

    On CUDA the parameters are stored channels_last (the layout the batches have) and
    ``torch.backends.cudnn.benchmark`` is set to ``convolutional``: cuDNN then times its
    convolution algorithms for each new input shape once, which pays for convolutional families
    (fixed batch shapes) and not for transformers. It is a process-wide flag, so it is set both
    ways: a reused Ray actor does not keep the previous trial's setting.

    ``compile=True`` compiles the module in place with ``nn.Module.compile`` (``torch.compile``
    of its call): the first forward pass, and the first in eval mode, take seconds to minutes
    (on CPU too, where it is allowed but slow to start). Compiling in place, rather than
    wrapping in ``torch.compile(model)``, keeps the module and its ``state_dict`` keys as they
    are, so its weights load into an uncompiled model of the same family;
    :func:`unwrap` also undoes a ``torch.compile`` wrapper made elsewhere.

    Returns the module to train (the same object, moved).
    """
    device = torch.device(device)
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = bool(convolutional)
    if compile:
        model.compile()
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a ``torch.compile(model)`` wrapper (its ``_orig_mod``), or
    ``model`` itself: the module whose ``state_dict`` to save."""
    return getattr(model, "_orig_mod", model)


def make_optimizer(model: nn.Module, hp) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and norm/scale parameters (1-D tensors). Fused (one
    kernel for all parameters) when every parameter is on CUDA, so call it after
    :func:`prepare_model`; the default implementation otherwise."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": float(hp.weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    params = decay + no_decay
    fused = {"fused": True} if params and all(p.is_cuda for p in params) else {}
    return torch.optim.AdamW(groups, lr=float(hp.lr), **fused)


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


# Losses are summed and checked for NaN/inf in blocks of this many steps instead of with a
# per-step `.item()`, which stalls a GPU's queue every step.
FINITE_CHECK_STEPS = 32


def _check_finite(losses: torch.Tensor, first_step: int, lr: float) -> None:
    """Raise :class:`NonFiniteLossError` naming the first NaN/inf among ``losses`` (k,), the
    losses of epoch steps ``first_step``, ``first_step + 1``, ..."""
    finite = torch.isfinite(losses)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0])
        raise NonFiniteLossError(
            f"training loss is {losses[bad].item()} at step {first_step + bad} of the epoch "
            f"(lr={lr:.3g})"
        )


class _LossLedger:
    """An epoch's per-step losses: their float64 sum on the losses' device, and the NaN/inf
    check, one block of ``FINITE_CHECK_STEPS`` steps at a time.

    On the CPU a block is checked as soon as it is full. On CUDA its values are copied to a
    pinned host buffer without blocking and checked when the next block is full, by which time
    the device has long finished them: the host never waits inside the step loop, and a NaN is
    reported at most ``2 * FINITE_CHECK_STEPS - 1`` steps after it. :meth:`finish` checks what
    is left, so a bad epoch always raises before it ends.
    """

    def __init__(self, device: torch.device, lr: float):
        self.lr = lr
        self.total = torch.zeros((), dtype=torch.float64, device=device)  # sum of closed blocks
        self.pending: list[torch.Tensor] = []
        self.first_step = 0  # epoch step of pending[0]
        self.host = (torch.empty(FINITE_CHECK_STEPS, pin_memory=True)
                     if device.type == "cuda" else None)
        self.in_flight: tuple[torch.Tensor, torch.cuda.Event, int] | None = None

    def add(self, loss: torch.Tensor) -> None:
        self.pending.append(loss.detach())
        if len(self.pending) == FINITE_CHECK_STEPS:
            self._close_block()

    def _close_block(self) -> None:
        losses = torch.stack(self.pending)  # (k,)
        self.total += losses.double().sum()
        if self.host is None:
            _check_finite(losses, self.first_step, self.lr)
        else:
            self._check_in_flight()  # also frees the one host buffer for this block
            buffer = self.host[:len(losses)]
            buffer.copy_(losses.float(), non_blocking=True)
            done = torch.cuda.Event()
            done.record()
            self.in_flight = (buffer, done, self.first_step)
        self.first_step += len(losses)
        self.pending = []

    def _check_in_flight(self) -> None:
        if self.in_flight is not None:
            buffer, done, first_step = self.in_flight
            self.in_flight = None
            done.synchronize()  # a block behind: already complete, unless at the epoch's end
            _check_finite(buffer, first_step, self.lr)

    def finish(self) -> None:
        """Check every remaining loss (waits for the device on CUDA)."""
        if self.pending:
            self._close_block()
        self._check_in_flight()


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
    """One pass over ``images`` (N, 1, H, W) float32 and ``labels`` (N,) int64 in a random
    order drawn from ``generator``; ``aug_generator`` lives on ``device``.

    The data either stay on the host (CPU tensors; each batch is copied to ``device``) or
    already live on ``device`` (from :func:`to_device`; no copies). The order is drawn where
    ``generator`` lives and used where the data live: give device data a generator on the
    device, so nothing crosses to the host (a CPU generator costs one small copy per epoch).
    CPU data with a CPU generator draw exactly the batches they always did.
    Raises :class:`NonFiniteLossError` naming the first NaN/inf loss before the epoch ends
    (see :class:`_LossLedger` for how soon); ValueError when images and labels are on
    different devices.
    """
    if labels.device != images.device:
        raise ValueError(f"images ({images.device}) and labels ({labels.device}) must be on one device")
    model.train()
    n, bs = len(labels), int(hp.batch_size)
    steps = steps_per_epoch(n, bs)
    per_step = min(bs, n)  # every step sees a full batch (the last partial one is dropped)
    smoothing = float(hp.label_smoothing)
    order = torch.randperm(n, generator=generator, device=generator.device).to(
        images.device, non_blocking=True)  # (N,); a move only for a generator on the other device
    ledger = _LossLedger(device, float(hp.lr))
    start = time.perf_counter()
    for step in range(steps):
        idx = order[step * bs:(step + 1) * bs]
        x = augment(prepare_batch(images[idx], device, img_size), hp, aug_generator)
        y = labels[idx].to(device, non_blocking=True)
        with autocast(device):
            loss = F.cross_entropy(model(x), y, label_smoothing=smoothing)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:  # float16 only (GPUs without bfloat16): its step syncs
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        ledger.add(loss)
    with deliberate_sync(device):
        ledger.finish()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        total = float(ledger.total.item())
    seen = steps * per_step
    return EpochStats(total * per_step / seen, seconds, seen / max(seconds, 1e-9))


def train_epochs(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, hp, *, epochs: int, seed: int,
    img_size: int, device: torch.device = torch.device("cpu"),
) -> nn.Module:
    """Train ``model`` for ``epochs`` with AdamW + warmup/cosine outside any study (no tracking,
    no checkpoints): batch order seeded by ``seed``, augmentation by ``seed + 10_000``, both
    drawn on ``device`` (data and model are moved there). Returns the model in eval mode."""
    model = prepare_model(model, device)
    images, labels = to_device(images, labels, device)
    optimizer = make_optimizer(model, hp)
    scheduler = make_scheduler(optimizer, hp, steps_per_epoch=steps_per_epoch(len(labels), hp.batch_size),
                               max_epochs=epochs)
    order = torch.Generator(device=images.device).manual_seed(seed)
    aug = torch.Generator(device=device).manual_seed(seed + 10_000)
    for _ in range(epochs):
        train_one_epoch(model, images, labels, optimizer=optimizer, scheduler=scheduler, hp=hp,
                        device=device, img_size=img_size, generator=order, aug_generator=aug)
    return model.eval()


def cross_entropy_of_probs(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood (nats) of the true class; the validation loss."""
    return metrics.nll(probs, labels)
