"""What a trial measures after each epoch: the validation split (loss, accuracy, macro and
per-class AUC) and, for a robust study, every set of its validation shift suite (macro AUC per
shift, and their mean or worst as ``val_robust_auc``). One prediction path for all of them:
:func:`tuner.models.io.predict_probs`, the function the registered model runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tuner import metrics as M
from tuner.models import io
from tuner.tracking import schema
from tuner.training import loop

SHIFT_KEY = "shift.{name}.{part}"  # keys of a shift set's arrays in a trial's data


def shift_data_keys(name: str) -> tuple[str, str]:
    """The keys of shift set ``name``'s images and labels in the data a trial receives."""
    return SHIFT_KEY.format(name=name, part="images"), SHIFT_KEY.format(name=name, part="labels")


def robust_score(aucs: list[float], reduce: str) -> float:
    """The robust objective over per-shift macro AUCs: their ``mean`` or the ``worst``."""
    if reduce not in ("mean", "worst"):
        raise ValueError(f"robust_reduce {reduce!r} not allowed; allowed: mean, worst")
    return float(np.mean(aucs)) if reduce == "mean" else float(np.min(aucs))


def epoch_values(model: torch.nn.Module, *, x_val: torch.Tensor, y_val: np.ndarray,
                 shift_sets: dict[str, tuple[torch.Tensor, np.ndarray]], img_size: int,
                 device: torch.device, class_names: list[str],
                 robust_reduce: str = "mean") -> tuple[dict[str, float], np.ndarray]:
    """(metrics, validation probabilities (N, C)) of ``model`` after an epoch.

    ``shift_sets``: name -> (images on ``device``, labels) of the validation shift suite
    (empty for a study on ``val_auc``); with shifts, ``val_auc_macro.<shift>`` for each and
    :data:`schema.ROBUST_OBJECTIVE` over them are added."""
    probs = io.predict_probs(model, x_val, img_size, device=device)
    report = M.classification_report(probs, y_val, list(class_names))
    values: dict[str, Any] = {
        schema.VAL_LOSS: loop.cross_entropy_of_probs(probs, y_val),
        schema.VAL_ACC: report["acc"], schema.OBJECTIVE: report["auc_macro"],
        **{schema.val_auc_of(c): report[f"auc_{c}"] for c in class_names},
    }
    if shift_sets:
        aucs = []
        for name, (images, labels) in shift_sets.items():
            shifted = io.predict_probs(model, images, img_size, device=device)
            auc = M.classification_report(shifted, labels, list(class_names))["auc_macro"]
            values[schema.shift_auc_of(name)] = auc
            aucs.append(auc)
        values[schema.ROBUST_OBJECTIVE] = robust_score(aucs, robust_reduce)
    return values, probs
