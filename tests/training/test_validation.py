"""What a trial measures after an epoch: the validation metrics, and for a robust study the
macro AUC on each validation shift set and their mean or worst (the objective)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tuner.tracking import schema
from tuner.training.validation import epoch_values, robust_score, shift_data_keys

CLASSES = ["no_sub", "cdm", "axion"]


class Oracle(torch.nn.Module):
    """Logits from the brightness of three vertical bands: class c is a bright band c (which
    survives the per-image min-max the preparation applies); noise blurs it."""

    def forward(self, x):
        bands = x[:, 0].reshape(len(x), 9, 3, 3).mean(dim=(1, 3))  # (B, 3): rows, band, width
        return 20 * bands


def _set(noise: float, n: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n)
    images = np.zeros((3 * n, 1, 9, 9), dtype=np.float32)
    for i, label in enumerate(labels):
        images[i, 0, :, 3 * label:3 * label + 3] = 1.0
    images += noise * rng.standard_normal(images.shape).astype(np.float32)
    return torch.from_numpy(images), labels


def test_robust_score_is_the_mean_or_the_worst():
    assert robust_score([0.9, 0.7, 0.8], "mean") == pytest.approx(0.8)
    assert robust_score([0.9, 0.7, 0.8], "worst") == 0.7
    with pytest.raises(ValueError, match="allowed: mean, worst"):
        robust_score([0.9], "median")


def test_epoch_values_add_every_shift_and_the_robust_objective():
    x_val, y_val = _set(0.0)
    shifts = {"noise_x2": _set(3.0, seed=1), "noise_x4": _set(6.0, seed=2)}
    plain, probs = epoch_values(Oracle(), x_val=x_val, y_val=y_val, shift_sets={}, img_size=9,
                                device=torch.device("cpu"), class_names=CLASSES)
    assert probs.shape == (90, 3) and plain[schema.OBJECTIVE] == pytest.approx(1.0)
    assert schema.ROBUST_OBJECTIVE not in plain
    values, _ = epoch_values(Oracle(), x_val=x_val, y_val=y_val, shift_sets=shifts, img_size=9,
                             device=torch.device("cpu"), class_names=CLASSES, robust_reduce="worst")
    two, four = values["val_auc_macro.noise_x2"], values["val_auc_macro.noise_x4"]
    assert 0.5 < four < two < 1.0  # more noise, lower AUC
    assert values[schema.ROBUST_OBJECTIVE] == four
    assert shift_data_keys("noise_x2") == ("shift.noise_x2.images", "shift.noise_x2.labels")
