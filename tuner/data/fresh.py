"""Fresh training data: each epoch of a trial simulated anew instead of read from the stored
train split (``--train-data fresh``). Validation and test stay the stored, fixed sets.

An epoch is described by the dataset it stands in for: preset, image size and preparation,
observing conditions (``meta.json``), the stored train split's counts per class unless others
are given. It is reproducible from (seed, epoch, device, block size): the labels are a seeded
permutation and block ``k`` of epoch ``e`` gets a generator seeded from
``SeedSequence(seed, spawn_key=(FRESH_STREAM, e, k))``. The dataset writer's keys are
``(split index 0..2, block)`` and its label keys ``(split index,)``, so no fresh block shares a
seed stream with a stored one, and a fresh epoch is never the stored train split (nor the
val or test split). Images are prepared exactly as the writer prepares them
(``tuner/data/preprocess.py``). Cost against reading the stored split:
bench/results/fresh_data.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuner.data.conditions import conditions_of, normalise_conditions
from tuner.data.simulate import (
    check_device,
    default_backend,
    default_block_size,
    effective_block_size,
    resolve_compile,
    simulate_block_tensors,
)
from tuner.data.store import DatasetError, DatasetMeta, read_meta

# First spawn-key entry of every fresh-data seed ("fres"); the writer's are split indices 0..2.
FRESH_STREAM = 0x66726573


def fresh_block_seed(seed: int, epoch: int, block: int) -> int:
    """Seed (0 <= s < 2**63) of the generator for block ``block`` of fresh epoch ``epoch``."""
    state = np.random.SeedSequence(seed, spawn_key=(FRESH_STREAM, epoch, block)).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def epoch_labels(seed: int, epoch: int, per_class: list[int]) -> np.ndarray:
    """Seeded permutation of ``per_class[c]`` copies of each label c: int64 (sum(per_class),)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(FRESH_STREAM, epoch)))
    return rng.permutation(np.repeat(np.arange(len(per_class), dtype=np.int64), per_class))


def _per_class(meta: DatasetMeta, counts: int | Mapping[str, int] | None) -> list[int]:
    names = meta.class_names
    if counts is None:
        counts = meta.counts["train"]
    if isinstance(counts, int):
        counts = {name: counts for name in names}
    unknown = sorted(set(counts) - set(names))
    if unknown:
        raise DatasetError(f"unknown classes {unknown} in counts; allowed: {', '.join(names)}")
    per_class = [int(counts.get(name, 0)) for name in names]
    if any(n < 0 for n in per_class) or sum(per_class) == 0:
        raise DatasetError(f"counts per class must be >= 0 with at least one image, got {dict(zip(names, per_class))}")
    return per_class


def simulate_training_epoch(
    dataset: DatasetMeta | str | Path,
    counts: int | Mapping[str, int] | None = None,
    *,
    seed: int,
    epoch: int,
    device: str | torch.device = "cpu",
    conditions: Any = None,
    block_size: int | None = None,
    compile: bool | str | None = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Simulate one epoch of training images for ``dataset`` (its meta or its root) on ``device``.

    ``counts``: images per class (an int for every class, or class name -> count); default the
    stored train split's. ``seed``: the trial's seed; ``epoch`` >= 0. ``conditions``: observing
    conditions (ObservingConditions or a mapping); None takes the dataset's own (meta.json),
    ``ObservingConditions()`` the preset's. ``block_size``: images per simulator call (default
    the device's, as the dataset writer's); ``compile`` as :func:`resolve_compile`.

    Returns images float32 (N, 1, S, S) with S = the dataset's image size, prepared as the
    stored images, and labels int64 (N,), both on ``device``, in a seeded random order.
    Same arguments on the same device: bitwise the same epoch; another epoch or seed: other
    systems. DatasetError for a dataset without a preset (a DeepLense import) or bad values.
    """
    meta = dataset if isinstance(dataset, DatasetMeta) else read_meta(dataset)
    if meta.source != "simulated" or meta.preset is None:
        raise DatasetError(f"fresh training data needs a simulated dataset (a preset); this one is {meta.source!r}")
    if seed < 0 or epoch < 0:
        raise DatasetError(f"seed and epoch must be >= 0, got seed {seed}, epoch {epoch}")
    device = check_device(str(device))
    per_class = _per_class(meta, counts)
    chosen = conditions_of(meta) if conditions is None else normalise_conditions(conditions)
    labels = epoch_labels(seed, epoch, per_class)
    size = effective_block_size(default_block_size(device) if block_size is None else block_size, len(labels))
    native = meta.native_image_size or meta.image_size
    img_size = meta.image_size if meta.image_size != native else None
    compiled = resolve_compile(compile, len(labels), native, device)
    backend = default_backend()
    images = torch.empty((len(labels), 1, meta.image_size, meta.image_size), dtype=torch.float32, device=device)
    for block, start in enumerate(range(0, len(labels), size)):
        part = labels[start : start + size]
        block_images, _ = simulate_block_tensors(
            backend, meta.preset, part, seed=fresh_block_seed(seed, epoch, block), block_size=size, device=device,
            img_size=img_size, compiled=compiled, conditions=chosen)
        images[start : start + len(part)] = block_images
    return images, torch.from_numpy(labels).to(device)
