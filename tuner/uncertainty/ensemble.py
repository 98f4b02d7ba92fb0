"""Deep ensembles (Lakshminarayanan et al. 2017) and hyper-ensembles (Wenzel et al. 2020).

A deep ensemble averages the softmax of M independently trained models. A hyper-ensemble
draws its members from the top trials of a study (different hyperparameters) and picks them
greedily on validation NLL with replacement (Caruana et al. 2004), so a member can carry a
weight above 1/k and a poor trial is never forced in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from tuner.uncertainty.predictive import Predictive, collect_logits

_EPS = 1e-12


def ensemble_predict(
    models: Sequence[nn.Module],
    images: torch.Tensor,
    weights: Sequence[float] | None = None,
    batch_size: int = 256,
) -> Predictive:
    """Weighted average of member softmaxes on ``images`` (N, 1, H, W).

    Returns probs (N, C) and the member probabilities (M, N, C) as samples; ``weights``
    (M,) default to uniform and are normalised to sum 1. Members with zero weight are skipped.
    """
    if len(models) == 0:
        raise ValueError("an ensemble needs at least one model")
    w = np.ones(len(models)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(models),) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {len(models)} non-negative numbers with a positive sum, got {weights}")
    keep = np.flatnonzero(w > 0)
    members = torch.stack([collect_logits(models[i], images, batch_size).softmax(-1) for i in keep])
    wt = torch.as_tensor(w[keep] / w[keep].sum(), dtype=members.dtype)
    probs = torch.einsum("m,mnc->nc", wt, members)
    # samples carry the weights as repeats would; MI of a weighted ensemble uses the same weights
    return Predictive(probs=probs, samples=_weighted_samples(members, w[keep]), forward_passes=len(keep))


def _weighted_samples(members: torch.Tensor, counts: np.ndarray) -> torch.Tensor:
    """Members repeated by integer counts (from greedy selection) so that sample means equal the
    weighted mean; non-integer weights leave the members as they are."""
    if np.allclose(counts, np.round(counts)) and counts.sum() <= 64:
        return members.repeat_interleave(torch.as_tensor(np.round(counts).astype(np.int64)), dim=0)
    return members


def greedy_hyper_ensemble(
    val_probs_list: Sequence, labels, k: int, *, init_best: int = 1
) -> tuple[list[int], np.ndarray]:
    """Caruana-style greedy selection with replacement on validation NLL.

    val_probs_list: M arrays (N, C) of each candidate's validation probabilities.
    labels: (N,) integer validation labels.
    k: number of selection rounds (ensemble size counting repeats).
    init_best: start from the ``init_best`` individually best candidates (reduces overfitting
        of the first picks, as in Caruana et al.).

    Returns the selected indices in pick order (length k, repeats allowed) and the weights (M,)
    = pick counts / k.
    """
    probs = np.stack([np.asarray(p, dtype=np.float64) for p in val_probs_list])  # (M, N, C)
    y = np.asarray(labels).astype(np.int64)
    if probs.ndim != 3 or probs.shape[1] != y.shape[0]:
        raise ValueError(f"expected M arrays (N, C) and labels (N,), got {probs.shape} and {y.shape}")
    if k < 1 or not 1 <= init_best <= k:
        raise ValueError(f"need k >= 1 and 1 <= init_best <= k, got k={k}, init_best={init_best}")
    true_p = probs[:, np.arange(len(y)), y]  # (M, N): only the true-class column matters for NLL
    single_nll = -np.log(np.clip(true_p, _EPS, 1)).mean(1)
    picks = [int(i) for i in np.argsort(single_nll, kind="stable")[:init_best]]
    total = true_p[picks].sum(0)
    while len(picks) < k:
        n = len(picks) + 1
        cand_nll = -np.log(np.clip((total[None] + true_p) / n, _EPS, 1)).mean(1)  # (M,)
        best = int(np.argmin(cand_nll))
        picks.append(best)
        total = total + true_p[best]
    weights = np.bincount(picks, minlength=len(probs)) / k
    return picks, weights


class DeepEnsemble:
    """Method wrapper: ``DeepEnsemble(models, weights).predict(images)``."""

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[float] | None = None, batch_size: int = 256):
        if len(models) == 0:
            raise ValueError("an ensemble needs at least one model")
        self.models, self.weights, self.batch_size = list(models), weights, batch_size

    @classmethod
    def hyper(
        cls, models: Sequence[nn.Module], images_val: torch.Tensor, labels_val: torch.Tensor, k: int, batch_size: int = 256
    ) -> "DeepEnsemble":
        """Hyper-ensemble: greedy selection of ``k`` picks among ``models`` on a validation split."""
        val = [collect_logits(m, images_val, batch_size).softmax(-1).numpy() for m in models]
        _, weights = greedy_hyper_ensemble(val, labels_val, k)
        return cls(models, weights * k, batch_size)

    def predict(self, images: torch.Tensor) -> Predictive:
        return ensemble_predict(self.models, images, self.weights, self.batch_size)
