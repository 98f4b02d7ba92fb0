"""Fixtures for the dataset store: a tiny fake simulator and DeepLense-format folders."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

FAKE_SIZES = {"fake16": 16, "fake24": 24}


def _fake_get_preset(name):
    if name not in FAKE_SIZES:
        raise ValueError(f"unknown preset {name!r}; allowed: {', '.join(FAKE_SIZES)}")
    return name


def _fake_simulate_batch(preset, labels, *, generator, device="cpu", dtype=torch.float32,
                         substructure=True, noise=True, normalize=True):
    """Blob at a random position, a bright pixel pattern per class when substructure is on.

    Draws the same random numbers whatever the flags, like the real simulator's contract.
    """
    size = FAKE_SIZES[_fake_get_preset(preset)]
    b = labels.shape[0]
    pos = torch.rand(b, 2, generator=generator, device=device) * 0.5 + 0.25  # (B, 2) in [0.25, 0.75]
    noise_draw = torch.randn(b, 1, size, size, generator=generator, device=device, dtype=dtype)
    grid = (torch.arange(size, device=device, dtype=dtype) + 0.5) / size
    gy, gx = torch.meshgrid(grid, grid, indexing="ij")
    r2 = (gx - pos[:, 0, None, None]) ** 2 + (gy - pos[:, 1, None, None]) ** 2  # (B, H, W)
    images = torch.exp(-r2 / 0.02)[:, None].to(dtype)
    if substructure:
        images[:, 0, 2, 2] += (labels == 1).to(dtype) * 0.5
        images[:, 0, size // 2, 2:-2] += (labels == 2).to(dtype)[:, None] * 0.3
    if noise:
        images = images + 0.01 * noise_draw
    if normalize:
        lo = images.amin(dim=(1, 2, 3), keepdim=True)
        hi = images.amax(dim=(1, 2, 3), keepdim=True)
        images = (images - lo) / (hi - lo)
    params = {
        "label": labels.clone(),
        "source_x_arcsec": pos[:, 0].to(torch.float64),
        "m_axion_ev": torch.where(labels == 2, torch.full_like(pos[:, 1], 1e-23), torch.nan),
    }
    return images, params


@pytest.fixture
def fake_backend():
    """Stand-in for ``tuner.lensing`` with the same interface and 16/24 px presets."""
    return SimpleNamespace(
        CLASS_NAMES=("no_sub", "cdm", "axion"),
        get_preset=_fake_get_preset,
        simulate_batch=_fake_simulate_batch,
        PRESETS=dict(FAKE_SIZES),
    )


def write_deeplense(root: Path, splits=("train",), names=("no", "sphere", "vort"), n=4, size=8,
                    leading_axis=False, seed=0) -> Path:
    """A tiny DeepLense-format folder; axion files hold ``[image, m_axion]`` object arrays."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for name in names:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                image = rng.random((1, size, size) if leading_axis else (size, size))
                if name in ("vort", "axion"):
                    obj = np.empty(2, dtype=object)
                    obj[0], obj[1] = image, 10 ** rng.uniform(-24, -22)
                    np.save(folder / f"{name}_sim_{i}.npy", obj, allow_pickle=True)
                else:
                    np.save(folder / f"{name}_sim_{i}.npy", image)
    return root


@pytest.fixture
def make_deeplense():
    """Factory ``make_deeplense(root, splits=..., names=..., n=..., size=..., leading_axis=...)``."""
    return write_deeplense


@pytest.fixture
def deeplense_dir(tmp_path):
    """DeepLense-format source with train/ and val/, 4 images per class each, 8 px."""
    return write_deeplense(tmp_path / "src", splits=("train", "val"))
