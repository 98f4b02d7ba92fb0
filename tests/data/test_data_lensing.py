"""The store with the real simulator (``tuner.lensing``) at micro size."""

from __future__ import annotations

import numpy as np
import pytest

from tuner.data import ensure_simulated, load_split, read_meta, simulate_dataset
from tuner.data.deeplense import CLASS_NAMES as IMPORT_CLASS_NAMES
from tuner.data.montage import substructure_residuals

lensing = pytest.importorskip("tuner.lensing")

COUNTS = {"train": 1, "val": 1, "test": 1}


def test_class_names_agree_with_simulator():
    assert IMPORT_CLASS_NAMES == tuple(lensing.CLASS_NAMES)


def test_micro_model_ii_is_reproducible_and_resimulable(tmp_path):
    kwargs = dict(seed=11, img_size=32, block_size=4)
    a = simulate_dataset(tmp_path / "a", "model_ii", COUNTS, **kwargs)
    b = simulate_dataset(tmp_path / "b", "model_ii", COUNTS, **kwargs)
    assert a.digest == b.digest
    assert (a.image_size, a.native_image_size, a.preset) == (32, 64, "model_ii")
    train = load_split(tmp_path / "a", "train", verify=True)
    assert train.images.shape == (3, 1, 32, 32)
    assert {"m_axion_ev", "n_subhalos", "source_x_arcsec", "sim_seed"} <= set(train.params)
    labels = train.labels.numpy()
    assert np.isnan(train.params["m_axion_ev"][labels != 2]).all()
    assert np.isfinite(train.params["m_axion_ev"][labels == 2]).all()
    picks = [int(np.flatnonzero(labels == k)[0]) for k in range(3)]
    residuals = substructure_residuals(train, picks)
    assert all(r.reproduced for r in residuals)
    assert np.abs(residuals[0].residual).max() == 0  # no_sub
    assert np.abs(residuals[1].residual).max() > 1e-3 and np.abs(residuals[2].residual).max() > 1e-3


def test_ensure_simulated_with_real_simulator(tmp_path):
    root = ensure_simulated(tmp_path / "d", "model_ii", 7, seed=0, img_size=16)
    meta = read_meta(root)
    assert meta.image_size == 16 and meta.counts["train"]["axion"] == 5
    assert ensure_simulated(root, "model_ii", 7, seed=0, img_size=16) == root


@pytest.mark.slow
def test_compiled_and_eager_datasets_agree(tmp_path):
    """Same seed: the compiled simulator gives the eager dataset to float32 rounding, and is
    itself bitwise reproducible."""
    kwargs = dict(seed=5, block_size=4)
    simulate_dataset(tmp_path / "e", "model_ii", COUNTS, compile=False, **kwargs)
    compiled = simulate_dataset(tmp_path / "c", "model_ii", COUNTS, compile=True, **kwargs)
    again = simulate_dataset(tmp_path / "a", "model_ii", COUNTS, compile=True, **kwargs)
    assert compiled.digest == again.digest
    for split in COUNTS:
        e, c = load_split(tmp_path / "e", split), load_split(tmp_path / "c", split)
        assert np.array_equal(e.labels.numpy(), c.labels.numpy())
        assert np.abs(e.images.numpy() - c.images.numpy()).max() < 1e-4  # normalised images
