"""Out-of-distribution (shift) detection from predictive uncertainty.

In-distribution images should be more certain than shifted ones. Each score is an uncertainty
(higher = more likely shifted): ``max_prob`` (1 - max probability), ``entropy`` (predictive
entropy, nats) and ``mutual_info`` (epistemic part; only for sampling methods). AUROC treats
shifted images as positives; FPR95 is the fraction of shifted images accepted as
in-distribution at the threshold that keeps 95% of in-distribution images.
"""

from __future__ import annotations

import numpy as np

from tuner.metrics import binary_auc, fpr_at_tpr
from tuner.uncertainty.predictive import Predictive


def uncertainty_scores(pred: Predictive) -> dict[str, np.ndarray]:
    """Per-image uncertainty scores (N,) by name; ``mutual_info`` only when sampled."""
    out = {
        "max_prob": (1.0 - pred.probs.max(-1).values).double().numpy(),
        "entropy": pred.entropy().double().numpy(),
    }
    if pred.samples is not None:
        out["mutual_info"] = pred.mutual_information().double().numpy()
    return out


def ood_metrics(pred_in: Predictive, pred_out: Predictive) -> dict[str, float]:
    """``ood_auroc_<score>`` and ``ood_fpr95_<score>`` for every score both predictives have."""
    s_in, s_out = uncertainty_scores(pred_in), uncertainty_scores(pred_out)
    out: dict[str, float] = {}
    for name in s_in.keys() & s_out.keys():
        scores = np.concatenate([s_in[name], s_out[name]])
        is_out = np.r_[np.zeros(len(s_in[name]), bool), np.ones(len(s_out[name]), bool)]
        out[f"ood_auroc_{name}"] = binary_auc(scores, is_out)
        # in-distribution is the positive class for FPR95: confidence = -uncertainty
        out[f"ood_fpr95_{name}"] = fpr_at_tpr(-scores, ~is_out, 0.95)
    return dict(sorted(out.items()))
