"""``--train-data fresh``: a trial trains every epoch on a training set it simulates on its own
device (:func:`tuner.data.fresh.simulate_training_epoch`) instead of the stored train split.

The sets follow from (the study's seed, the epoch): every trial of a study sees the same
sequence, so trials stay comparable, and a trial resumed from a checkpoint simulates again what
it would have; the validation and test splits stay the stored ones.
"""

from __future__ import annotations

import time
from typing import Any

import torch


def fresh_spec(meta, train_counts: dict[str, int]) -> dict[str, Any]:
    """What a trial needs to simulate its training sets: the dataset's meta (preset, image
    size, preparation, observing conditions) and the train split's images per class."""
    return {"meta": meta.model_dump(mode="json"), "counts": dict(train_counts)}


class FreshEpochs:
    """One trial's fresh training sets; ``last_seconds``: wall time of the last simulation
    (logged as ``simulation_seconds`` beside ``epoch_seconds``)."""

    def __init__(self, spec: dict[str, Any], *, seed: int, device: torch.device):
        from tuner.data.store import DatasetMeta

        self.meta = DatasetMeta(**spec["meta"])
        self.counts = dict(spec["counts"])
        self.seed, self.device = seed, device
        self.last_seconds = 0.0

    def epoch(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The training set of ``epoch`` (from 1): images (N, 1, H, W) and labels (N,) on the
        trial's device."""
        from tuner.data.fresh import simulate_training_epoch

        start = time.perf_counter()
        images, labels = simulate_training_epoch(self.meta, self.counts, seed=self.seed,
                                                 epoch=epoch, device=str(self.device))
        images, labels = images.to(self.device), labels.to(self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.last_seconds = time.perf_counter() - start
        return images, labels
