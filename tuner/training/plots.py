"""Figures of a trial's best epoch: one-vs-rest ROC curves, confusion matrix.

A trial logs its best epoch's validation probabilities (``BEST_PROBS``) with its weights; the
driver draws the figures once per trial, after the trial has ended
(:func:`log_best_epoch_plots`), so no trial spends device time on matplotlib."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tuner import metrics


# Artifact of a trial run: its best epoch's validation probabilities (N, C) and labels (N,).
BEST_PROBS = "best_val_probs.npz"
PLOTS = ("roc_curves.png", "confusion_matrix.png")


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


def log_best_epoch_plots(client, run_id: str, class_names: list[str], title: str = "") -> bool:
    """Draw and log the ROC and confusion-matrix PNGs of a trial run from its ``BEST_PROBS``
    artifact; False (nothing drawn) when the run has no such artifact or has the plots."""
    import tempfile

    names = {a.path for a in client.list_artifacts(run_id)}
    if BEST_PROBS not in names or set(PLOTS) <= names:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with np.load(client.download_artifacts(run_id, BEST_PROBS, tmp), allow_pickle=False) as saved:
            probs, labels = saved["probs"], saved["labels"]
        plot_roc_curves(probs, labels, class_names, folder / PLOTS[0], title=title)
        plot_confusion_matrix(probs, labels, class_names, folder / PLOTS[1])
        for name in PLOTS:
            client.log_artifact(run_id, str(folder / name))
    return True
