"""Uncertainty plots as PNG files. Figures are built with ``matplotlib.figure.Figure`` (the Agg
canvas, no pyplot state), so plotting works headless and leaves no global figures behind.
Each function writes one file and returns its path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from tuner.metrics import calibration_bins, risk_coverage


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def reliability_diagram(probs, labels, path: Path, n_bins: int = 15, title: str = "") -> Path:
    """Accuracy vs confidence per equal-width bin (bars), the diagonal, and bin counts."""
    conf, acc, counts = calibration_bins(probs, labels, n_bins)
    edges = np.linspace(0, 1, n_bins + 1)
    centers = 0.5 * (edges[1:] + edges[:-1])
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    keep = counts > 0
    ax.bar(centers[keep], acc[keep], width=1 / n_bins, edgecolor="k", alpha=0.7, label="accuracy")
    ax.bar(centers[keep], (conf - acc)[keep], bottom=acc[keep], width=1 / n_bins, color="tab:red",
           alpha=0.3, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=title or "reliability")
    ax.legend(loc="upper left")
    return _save(fig, path)


def risk_coverage_curve(curves: dict[str, tuple], labels, path: Path) -> Path:
    """Selective risk vs coverage; ``curves`` maps a name to (probs, confidence or None)."""
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    for name, (probs, confidence) in curves.items():
        cov, risk = risk_coverage(probs, labels, confidence)
        ax.plot(cov, risk, label=f"{name} (AURC {risk.mean():.4f})")
    ax.set(xlabel="coverage", ylabel="risk (error rate)", xlim=(0, 1), title="risk-coverage")
    ax.legend()
    return _save(fig, path)


def entropy_histograms(entropy_in, entropy_out: dict[str, np.ndarray], path: Path, n_classes: int = 3) -> Path:
    """Histograms of predictive entropy (nats) in-distribution vs each shifted set."""
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    bins = np.linspace(0, np.log(n_classes), 31)
    ax.hist(np.asarray(entropy_in), bins=bins, density=True, alpha=0.5, label="in-distribution")
    for name, ent in entropy_out.items():
        ax.hist(np.asarray(ent), bins=bins, density=True, alpha=0.5, histtype="stepfilled", label=name)
    ax.set(xlabel="predictive entropy (nats)", ylabel="density", title="entropy in vs out")
    ax.legend()
    return _save(fig, path)


def set_size_histogram(sizes: dict[str, np.ndarray], path: Path, n_classes: int = 3) -> Path:
    """Fraction of images per conformal set size (0..C), one bar group per data set."""
    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    width = 0.8 / max(len(sizes), 1)
    for i, (name, s) in enumerate(sizes.items()):
        frac = np.bincount(np.asarray(s, dtype=int), minlength=n_classes + 1) / max(len(s), 1)
        ax.bar(np.arange(n_classes + 1) + i * width, frac, width=width, label=name)
    ax.set(xlabel="prediction set size", ylabel="fraction of images", title="conformal set sizes")
    ax.set_xticks(np.arange(n_classes + 1) + 0.4 - width / 2, [str(k) for k in range(n_classes + 1)])
    ax.legend()
    return _save(fig, path)
