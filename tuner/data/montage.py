"""Montage of a dataset: a few images per class and, for simulated data, substructure residuals.

The residual of a system is its noise-free image minus the noise-free image of the same system
(same host, source and draws) without substructure, re-simulated from the block seed stored in
``params["sim_seed"]``. It shows what the classifier has to find.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tuner.data.conditions import conditions_of
from tuner.data.simulate import block_seed, default_backend, effective_block_size, simulate_block
from tuner.data.store import DatasetError, Split, load_split

# Largest difference allowed between a stored image and its re-simulation (float32 round-off).
_REPRODUCE_ATOL = 1e-5


@dataclass(frozen=True)
class Residual:
    """One system: ``stored`` image (H, W), noise-free ``smooth`` (without substructure) and
    ``residual`` = noise-free with minus without substructure, in units of the smooth peak."""

    index: int
    label: int
    stored: np.ndarray
    smooth: np.ndarray
    residual: np.ndarray
    reproduced: bool


def substructure_residuals(
    split: Split, indices: list[int], *, backend: ModuleType | Any | None = None
) -> list[Residual]:
    """Re-simulate the blocks holding ``indices`` of a simulated split and return residuals.

    ``reproduced`` says whether re-simulating with the stored settings gave the stored image, i.e.
    the residual belongs to exactly this system. DatasetError for non-simulated data.
    """
    meta = split.meta
    if meta.source != "simulated" or meta.block_size is None or meta.seed is None or meta.preset is None:
        raise DatasetError(f"residuals need a simulated dataset; this one is {meta.source!r}")
    device = meta.device or "cpu"
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise DatasetError(f"dataset was simulated on {device}; residuals need that device, which is absent")
    backend = backend or default_backend()
    size = meta.image_size if meta.image_size != meta.native_image_size else None
    labels = split.labels.numpy()
    block_size = effective_block_size(meta.block_size, len(labels))
    by_block: dict[int, list[int]] = {}
    for index in indices:
        by_block.setdefault(index // block_size, []).append(index)
    out: dict[int, Residual] = {}
    for block, members in by_block.items():
        start = block * block_size
        block_labels = labels[start : start + block_size]
        seed = block_seed(meta.seed, split.name, block)
        kwargs = dict(seed=seed, block_size=block_size, device=device, img_size=size,
                      compiled=bool(meta.compiled), conditions=conditions_of(meta))
        again, _ = simulate_block(backend, meta.preset, block_labels, **kwargs)
        lumpy, _ = simulate_block(backend, meta.preset, block_labels, noise=False, normalize=False, **kwargs)
        smooth, _ = simulate_block(
            backend, meta.preset, block_labels, substructure=False, noise=False, normalize=False, **kwargs
        )
        for index in members:
            i = index - start
            stored = split.images[index, 0].numpy()
            peak = float(smooth[i, 0].max()) or 1.0
            out[index] = Residual(
                index=index,
                label=int(labels[index]),
                stored=stored,
                smooth=smooth[i, 0],
                residual=(lumpy[i, 0] - smooth[i, 0]) / peak,
                reproduced=bool(np.allclose(again[i, 0], stored, atol=_REPRODUCE_ATOL, rtol=0)),
            )
    return [out[i] for i in indices]


def pick_indices(labels: np.ndarray, label: int, n: int) -> list[int]:
    """The first ``n`` indices with ``label`` (the earliest blocks: fewest re-simulations)."""
    return np.flatnonzero(labels == label)[:n].tolist()


def render_montage(
    root: str | Path,
    out: str | Path,
    *,
    split: str = "train",
    n_per_class: int = 4,
    n_residuals: int = 2,
    backend: ModuleType | Any | None = None,
) -> list[Residual]:
    """Write a PNG montage of ``n_per_class`` images per class and ``n_residuals`` residual rows
    per substructure class (simulated datasets only). Returns the residuals shown."""
    if n_per_class < 1:
        raise DatasetError(f"n_per_class must be >= 1, got {n_per_class}")
    if n_residuals < 0:
        raise DatasetError(f"n_residuals must be >= 0, got {n_residuals}")
    data = load_split(root, split)
    names = data.meta.class_names
    labels = data.labels.numpy()
    residuals: list[Residual] = []
    if n_residuals and data.meta.source == "simulated":
        wanted = [i for k in range(1, len(names)) for i in pick_indices(labels, k, n_residuals)]
        residuals = substructure_residuals(data, wanted, backend=backend)

    n_cols = max(n_per_class, 3)
    fig = Figure(figsize=(1.9 * n_cols, 1.9 * (len(names) + len(residuals)) + 0.8), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[len(names), max(len(residuals), 1e-3)])
    title = data.meta.preset or f"imported from {Path(data.meta.source_path or '').name}"
    top.suptitle(f"{Path(root).name}: {title}, {split} split, {data.meta.image_size} px")
    axes = top.subplots(len(names), n_per_class, squeeze=False)
    for k, name in enumerate(names):
        for j, index in enumerate(pick_indices(labels, k, n_per_class)):
            ax = axes[k, j]
            ax.imshow(data.images[index, 0].numpy(), cmap="magma", vmin=0, vmax=1)
            ax.set_title(_caption(data, index), fontsize=7)
        axes[k, 0].set_ylabel(name)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if residuals:
        _draw_residuals(bottom, residuals, names)
    FigureCanvasAgg(fig).print_png(str(out))
    return residuals


def _caption(data: Split, index: int) -> str:
    mass = data.params.get("m_axion_ev")
    if mass is not None and np.isfinite(mass[index]):
        return f"#{index}  m_a={mass[index]:.1e} eV"
    return f"#{index}"


def _draw_residuals(fig: Any, residuals: list[Residual], names: tuple[str, ...]) -> None:
    fig.suptitle("substructure residual: noise-free image minus the same system without substructure")
    axes = fig.subplots(len(residuals), 3, squeeze=False)
    for row, res in zip(axes, residuals):
        row[0].imshow(res.stored, cmap="magma", vmin=0, vmax=1)
        row[0].set_title(f"{names[res.label]} #{res.index}" + ("" if res.reproduced else " (not reproduced)"), fontsize=7)
        row[1].imshow(res.smooth, cmap="magma")
        row[1].set_title("without substructure, noise-free", fontsize=7)
        vmax = float(np.abs(res.residual).max()) or 1e-6
        im = row[2].imshow(res.residual, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        row[2].set_title(f"residual (max {vmax:.1%} of peak)", fontsize=7)
        fig.colorbar(im, ax=row[2], fraction=0.046)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
