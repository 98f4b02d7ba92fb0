"""Classification and calibration metrics on predicted class probabilities.

All functions take ``probs`` of shape (N, C) (rows sum to 1) and integer ``labels`` of
shape (N,), as numpy arrays or anything ``np.asarray`` accepts (CPU tensors included).
"""

from __future__ import annotations

import numpy as np


def _as_arrays(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    if p.ndim != 2 or y.ndim != 1 or p.shape[0] != y.shape[0]:
        raise ValueError(f"expected probs (N, C) and labels (N,), got {p.shape} and {y.shape}")
    return p, y


def accuracy(probs, labels) -> float:
    """Fraction of samples whose arg-max class equals the label."""
    p, y = _as_arrays(probs, labels)
    return float(np.mean(p.argmax(1) == y))


def binary_auc(scores, positives) -> float:
    """Area under the ROC curve of ``scores`` for boolean ``positives`` (Mann-Whitney U with
    average ranks for ties). NaN when only one class is present."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty_like(s)
    # average ranks over runs of equal scores
    boundaries = np.flatnonzero(np.diff(sorted_s)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(s)]))
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of each run
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc_ovr(probs, labels, class_names: list[str] | None = None) -> dict[str, float]:
    """One-vs-rest ROC AUC per class and their unweighted mean under key ``"macro"``."""
    p, y = _as_arrays(probs, labels)
    names = class_names or [str(c) for c in range(p.shape[1])]
    out = {name: binary_auc(p[:, c], y == c) for c, name in enumerate(names)}
    values = [v for v in out.values() if not np.isnan(v)]
    out["macro"] = float(np.mean(values)) if values else float("nan")
    return out


def roc_curve(scores, positives) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every threshold, from (0, 0) to (1, 1)."""
    s = np.asarray(scores, dtype=np.float64)
    pos = np.asarray(positives, dtype=bool)
    order = np.argsort(-s, kind="mergesort")
    s, pos = s[order], pos[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(pos)[last_of_run]
    fps = (last_of_run + 1) - tps
    tpr = np.r_[0.0, tps / max(pos.sum(), 1)]
    fpr = np.r_[0.0, fps / max((~pos).sum(), 1)]
    return fpr, tpr


def confusion_matrix(probs, labels, num_classes: int | None = None) -> np.ndarray:
    """Counts (C, C): rows are true classes, columns predicted classes."""
    p, y = _as_arrays(probs, labels)
    c = num_classes or p.shape[1]
    return np.bincount(y * c + p.argmax(1), minlength=c * c).reshape(c, c)


def nll(probs, labels, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the true class (nats)."""
    p, y = _as_arrays(probs, labels)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], eps, 1.0))))


def brier(probs, labels) -> float:
    """Mean over samples of the squared distance between probs and the one-hot label."""
    p, y = _as_arrays(probs, labels)
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def calibration_bins(probs, labels, n_bins: int = 15):
    """Equal-width confidence bins over [0, 1]: (confidence mean, accuracy, count) per bin."""
    p, y = _as_arrays(probs, labels)
    conf = p.max(1)
    correct = (p.argmax(1) == y).astype(np.float64)
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return conf_sum / counts, acc_sum / counts, counts


def ece(probs, labels, n_bins: int = 15) -> float:
    """Expected calibration error of the top-class confidence (Guo et al. 2017), 15 bins."""
    conf, acc, counts = calibration_bins(probs, labels, n_bins)
    keep = counts > 0
    return float(np.sum(counts[keep] / counts.sum() * np.abs(conf[keep] - acc[keep])))


def mce(probs, labels, n_bins: int = 15) -> float:
    """Maximum calibration error over non-empty bins."""
    conf, acc, counts = calibration_bins(probs, labels, n_bins)
    keep = counts > 0
    return float(np.max(np.abs(conf[keep] - acc[keep])))


def risk_coverage(probs, labels, confidence=None) -> tuple[np.ndarray, np.ndarray]:
    """Selective risk (error rate) at each coverage when keeping the most confident samples."""
    p, y = _as_arrays(probs, labels)
    conf = p.max(1) if confidence is None else np.asarray(confidence, dtype=np.float64)
    order = np.argsort(-conf, kind="mergesort")
    errors = (p.argmax(1) != y)[order].astype(np.float64)
    n = np.arange(1, len(y) + 1)
    return n / len(y), np.cumsum(errors) / n


def aurc(probs, labels, confidence=None) -> float:
    """Area under the risk-coverage curve (lower is better)."""
    _, risk = risk_coverage(probs, labels, confidence)
    return float(np.mean(risk))


def classification_report(probs, labels, class_names: list[str]) -> dict[str, float]:
    """The standard metric set, flat, with MLflow-friendly keys."""
    auc = roc_auc_ovr(probs, labels, class_names)
    out = {"acc": accuracy(probs, labels), "auc_macro": auc.pop("macro")}
    out.update({f"auc_{name}": value for name, value in auc.items()})
    out.update(nll=nll(probs, labels), brier=brier(probs, labels), ece=ece(probs, labels))
    return out


def fpr_at_tpr(scores, positives, tpr: float = 0.95) -> float:
    """Lowest false-positive rate among thresholds reaching a true-positive rate >= ``tpr``
    (e.g. FPR95 for out-of-distribution detection with in-distribution as positive)."""
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    pos = np.asarray(positives, dtype=bool)
    if pos.all() or not pos.any():
        return float("nan")
    fpr, tprs = roc_curve(scores, pos)
    return float(fpr[np.flatnonzero(tprs >= tpr - 1e-12)[0]])
