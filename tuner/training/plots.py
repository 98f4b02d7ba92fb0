"""Figures logged with a trial at its best epoch: one-vs-rest ROC curves, confusion matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tuner import metrics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # trials run headless
    import matplotlib.pyplot as plt

    return plt


def plot_roc_curves(probs: np.ndarray, labels: np.ndarray, class_names: list[str], path: Path,
                    title: str = "") -> Path:
    """One-vs-rest ROC curve per class of ``probs`` (N, C) against ``labels`` (N,), as PNG."""
    plt = _pyplot()
    auc = metrics.roc_auc_ovr(probs, labels, class_names)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for c, name in enumerate(class_names):
        fpr, tpr = metrics.roc_curve(probs[:, c], labels == c)
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc[name]:.4f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="false positive rate", ylabel="true positive rate",
           title=title or f"ROC, macro AUC {auc['macro']:.4f}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_confusion_matrix(probs: np.ndarray, labels: np.ndarray, class_names: list[str],
                          path: Path, title: str = "") -> Path:
    """Confusion matrix (rows true, columns predicted) with counts, as PNG."""
    plt = _pyplot()
    counts = metrics.confusion_matrix(probs, labels, len(class_names))
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(counts, cmap="Blues")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center",
                    color="white" if counts[i, j] > counts.max() / 2 else "black")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names)
    ax.set_yticks(ticks, class_names)
    ax.set(xlabel="predicted", ylabel="true",
           title=title or f"accuracy {metrics.accuracy(probs, labels):.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
