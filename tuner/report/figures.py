"""The report's figures, as PNG files: ROC of each family, learning curves with the epochs
where the strategy's scheduler decides and how each trial ended, parameter importances, the
champion's calibration."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tuner import metrics
from tuner.report.collect import ChampionProbs, TrialCurve
from tuner.tracking import schema

# how a trial ended -> (marker, colour, legend text) of its last point
END_MARKERS = {schema.STOP_COMPLETED: ("o", "black", "completed its budget"),
               schema.STOP_ASHA: ("X", "tab:red", "stopped by ASHA"),
               schema.STOP_HYPERBAND: ("P", "tab:orange", "stopped by HyperBand"),
               schema.STOP_FAILED: ("v", "tab:purple", "failed"),
               **{reason: ("s", "tab:gray", "stopped with the study") for reason in schema.STUDY_STOPS}}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int, width: float = 4.2, height: float = 3.6):
    plt = _pyplot()
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return plt, fig, list(axes.flat[:n])


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def macro_roc(roc: dict[str, dict[str, list[float]]], grid: np.ndarray) -> np.ndarray:
    """Mean over classes of the one-vs-rest TPR interpolated on the FPR ``grid``."""
    return np.mean([np.interp(grid, c["fpr"], c["tpr"]) for c in roc.values()], axis=0)


def plot_family_rocs(rows: list[dict], rocs: dict, path: Path) -> list[str]:
    """One macro ROC curve per family's best trial that has a test ROC; returns those families."""
    plt = _pyplot()
    grid = np.linspace(0.0, 1.0, 201)
    fig, ax = plt.subplots(figsize=(6, 5))
    plotted = []
    for row in rows:
        kind, roc = rocs.get(row["family"], (None, None))
        if kind != "test" or row["test_auc"] is None:
            continue
        ax.plot(grid, macro_roc(roc, grid), label=f"{row['family']} (test AUC {row['test_auc']:.4f})")
        plotted.append(row["family"])
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate (macro over classes)",
           title="test ROC of each family's best trial")
    if plotted:
        ax.legend(loc="lower right", fontsize=8)
    _save(plt, fig, path)
    return plotted


def plot_roc_per_family(rocs: dict, path: Path) -> Path:
    """One panel per family: the one-vs-rest ROC curve of each class of its best trial."""
    plt, fig, axes = _grid(len(rocs))
    for ax, (family, (kind, roc)) in zip(axes, sorted(rocs.items())):
        for name, curve in roc.items():
            auc = float(np.trapezoid(curve["tpr"], curve["fpr"]))
            ax.plot(curve["fpr"], curve["tpr"], label=f"{name} (AUC {auc:.3f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(title=f"{family}: {kind} ROC, best trial", xlabel="false positive rate",
               ylabel="true positive rate")
        ax.legend(loc="lower right", fontsize=7)
    return _save(plt, fig, path)


def plot_learning_curves(curves: list[TrialCurve], decisions: dict[str, list[int]], path: Path,
                         decides_at: str | None = None) -> Path:
    """One panel per family: each trial's validation macro AUC per epoch, its last epoch marked
    by how it ended (an ASHA stop sits on the rung where ASHA stopped it), and dotted the
    epochs where the strategy's scheduler decides (``decisions``: family -> epochs; what they
    are called: ``decides_at``, e.g. "ASHA's rungs")."""
    families = sorted({c.family for c in curves})
    plt, fig, axes = _grid(len(families), width=4.8)
    for ax, family in zip(axes, families):
        for epoch in decisions.get(family, []):
            ax.axvline(epoch, color="grey", ls=":", lw=0.8)
        seen = set()
        for curve in (c for c in curves if c.family == family and c.epochs):
            line, = ax.plot(curve.epochs, curve.values, lw=1, alpha=0.8)
            marker, colour, text = END_MARKERS.get(curve.stop_reason, ("s", "grey", curve.stop_reason))
            ax.plot(curve.epochs[-1], curve.values[-1], marker=marker, color=colour, ms=7,
                    ls="none", label=None if curve.stop_reason in seen else text)
            seen.add(curve.stop_reason)
        ax.set(title=f"{family}: validation macro AUC per trial", xlabel="epoch",
               ylabel=schema.OBJECTIVE)
        ax.xaxis.get_major_locator().set_params(integer=True)
        title = f"dotted: {decides_at}" if decides_at and decisions.get(family) else None
        ax.legend(loc="lower right", fontsize=7, title=title, title_fontsize=7)
    return _save(plt, fig, path)


def plot_importances(values: dict[str, dict[str, float]], path: Path) -> Path:
    """One panel per family: fANOVA importance of each tuned parameter (sums to 1)."""
    plt, fig, axes = _grid(len(values), width=4.8)
    for ax, (family, importances) in zip(axes, sorted(values.items())):
        items = sorted(importances.items(), key=lambda kv: kv[1])
        ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
        ax.set(title=f"{family}: parameter importance", xlabel="fANOVA importance", xlim=(0, 1))
        ax.tick_params(axis="y", labelsize=7)
    return _save(plt, fig, path)


def plot_calibration(champion: ChampionProbs, path: Path, n_bins: int = 15) -> Path:
    """The champion on the test split: reliability diagram of the top-class confidence (with
    its ECE), the confidence histogram, and one-vs-rest reliability per class."""
    plt = _pyplot()
    probs, labels = champion.probs, champion.labels
    conf, acc, counts = metrics.calibration_bins(probs, labels, n_bins)
    keep = counts > 0
    fig, (ax_rel, ax_hist, ax_cls) = plt.subplots(1, 3, figsize=(14, 4.3))
    edges = np.linspace(0, 1, n_bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    ax_rel.bar(centres[keep], acc[keep], width=1 / n_bins, edgecolor="black", alpha=0.7,
               label="accuracy")
    ax_rel.bar(centres[keep], conf[keep] - acc[keep], bottom=acc[keep], width=1 / n_bins,
               color="tab:red", alpha=0.3, label="gap to confidence")
    ax_rel.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax_rel.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
               title=f"reliability, ECE {metrics.ece(probs, labels):.4f}")
    ax_rel.legend(loc="upper left", fontsize=8)
    ax_hist.bar(centres, counts, width=1 / n_bins, edgecolor="black")
    ax_hist.set(xlim=(0, 1), xlabel="confidence", ylabel="test images",
                title=f"confidence, mean {probs.max(1).mean():.3f}, accuracy "
                      f"{metrics.accuracy(probs, labels):.3f}")
    for c, name in enumerate(champion.class_names):
        p = probs[:, c]
        idx = np.clip(np.ceil(p * 10).astype(int) - 1, 0, 9)
        n = np.bincount(idx, minlength=10)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_p = np.bincount(idx, weights=p, minlength=10) / n
            freq = np.bincount(idx, weights=(labels == c).astype(float), minlength=10) / n
        ax_cls.plot(mean_p[n > 0], freq[n > 0], "o-", label=name)
    ax_cls.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax_cls.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability",
               ylabel="observed frequency", title="one-vs-rest reliability per class")
    ax_cls.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"calibration of the champion {champion.label} on {len(labels)} test images",
                 fontsize=10)
    return _save(plt, fig, path)
