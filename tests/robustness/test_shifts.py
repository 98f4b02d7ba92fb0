"""The shift suite: definitions, the same systems observed differently, stored once and
deterministic, capped suites, atomic writes, and the dataset's own verification untouched."""

from __future__ import annotations

import numpy as np
import pytest

import tuner.robustness.shifts as shifts_mod
from tuner.data import DatasetError, import_deeplense, load_split, read_meta, simulate_dataset
from tuner.data.store import _dataset_files, verify_dataset
from tuner.robustness.shifts import (
    SHIFTS,
    ensure_shift_suite,
    load_deeplense_shift,
    load_shift,
    load_shift_suite,
)

from tests.data.conftest import write_deeplense

COUNTS = {"train": 2, "val": 2, "test": 5}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """model_ii at 32 px in blocks of 4 (the test split spans 4 blocks)."""
    root = tmp_path_factory.mktemp("ds") / "model_ii"
    simulate_dataset(root, "model_ii", COUNTS, seed=4, img_size=32, block_size=4)
    return root


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("shifts"))
    return dst


def test_definitions():
    assert list(SHIFTS) == ["noise_x0.5", "noise_x2", "noise_x4", "psf_x0.75", "psf_x1.5", "mag_plus1", "mag_minus1",
                            "instrument_model_iii"]
    assert [(s.kind, s.severity) for s in SHIFTS.values()] == [
        ("noise", 0.5), ("noise", 2.0), ("noise", 4.0), ("psf", 0.75), ("psf", 1.5), ("magnitude", 1.0),
        ("magnitude", -1.0), ("instrument", 1.0)]
    assert SHIFTS["noise_x4"].conditions.noise_scale == (4.0, 4.0)
    assert SHIFTS["mag_minus1"].conditions.source_mag_offset == (-1.0, -1.0)


def test_suite_holds_the_same_systems_observed_differently(dataset):
    paths = ensure_shift_suite(dataset, split="test")
    assert list(paths) == list(SHIFTS) and all(p.parent == dataset / "shifts" / "test" for p in paths.values())
    base = load_split(dataset, "test")
    for name, path in paths.items():
        shifted = load_shift(path, verify=True)
        assert shifted.images.shape == base.images.shape and shifted.name == "test"
        np.testing.assert_array_equal(shifted.labels.numpy(), base.labels.numpy())
        np.testing.assert_array_equal(shifted.params["base_index"], np.arange(len(base)))
        for key in ("source_x_arcsec", "source_y_arcsec", "subhalo_mass_msun", "m_axion_ev", "sim_seed"):
            np.testing.assert_array_equal(shifted.params[key], base.params[key], err_msg=f"{name} {key}")
        assert not np.array_equal(shifted.images.numpy(), base.images.numpy()), name
        assert shifted.images.min() == 0 and shifted.images.max() == 1  # prepared like the dataset
        meta = shifted.meta
        assert meta.shift["name"] == name and meta.shift["base_digest"] == read_meta(dataset).digest
        assert meta.shift["paired"] and meta.image_size == 32 and meta.preprocessing == base.meta.preprocessing
    noisy = load_shift(paths["noise_x2"])
    np.testing.assert_allclose(noisy.params["background_rms"], 2 * base.params["background_rms"], rtol=1e-6)
    hst = load_shift(paths["instrument_model_iii"])
    assert (hst.params["exposure_s"] == 5400).all() and hst.meta.shift["simulated_preset"] == "model_ii@model_iii"


def test_an_identity_shift_reproduces_the_split_bit_for_bit(dataset, monkeypatch):
    """What makes the suite a paired set: a shift that changes nothing gives the stored images."""
    monkeypatch.setitem(SHIFTS, "noise_x1", shifts_mod._noise(1.0))
    base = load_split(dataset, "test")
    full = load_shift(ensure_shift_suite(dataset, names=["noise_x1"])["noise_x1"])
    np.testing.assert_array_equal(full.images.numpy(), base.images.numpy())
    capped = load_shift(ensure_shift_suite(dataset, names=["noise_x1"], n_per_class=2)["noise_x1"])
    picked = capped.params["base_index"]
    assert np.bincount(capped.labels.numpy()).tolist() == [2, 2, 2]
    for label in range(3):  # the first two of each class, in split order
        np.testing.assert_array_equal(picked[capped.labels.numpy() == label],
                                      np.flatnonzero(base.labels.numpy() == label)[:2])
    np.testing.assert_array_equal(capped.images.numpy(), base.images.numpy()[picked])


def test_suite_is_deterministic_reused_and_rebuilt_when_stale(dataset, tmp_path, monkeypatch):
    first = ensure_shift_suite(dataset, names=["noise_x4", "psf_x1.5"])
    other = _copy(dataset, tmp_path / "copy")
    second = ensure_shift_suite(other, names=["noise_x4", "psf_x1.5"])
    for name in first:
        assert read_meta(first[name], splits=()).digest == read_meta(second[name], splits=()).digest
    stat = (first["noise_x4"] / "test" / "images.npy").stat().st_mtime_ns

    def must_not_run(*args, **kwargs):
        raise AssertionError("simulated again although the shift is stored")

    monkeypatch.setattr(shifts_mod, "simulate_block", must_not_run)
    assert ensure_shift_suite(dataset, names=["noise_x4", "psf_x1.5"]) == first
    assert (first["noise_x4"] / "test" / "images.npy").stat().st_mtime_ns == stat
    monkeypatch.undo()
    monkeypatch.setattr(shifts_mod, "SHIFT_FORMAT", shifts_mod.SHIFT_FORMAT + 1)  # a changed definition
    digest = read_meta(first["noise_x4"], splits=()).digest
    ensure_shift_suite(dataset, names=["noise_x4"])
    assert read_meta(first["noise_x4"], splits=()).shift["format"] == shifts_mod.SHIFT_FORMAT
    assert read_meta(first["noise_x4"], splits=()).digest == digest  # same content, rebuilt


def test_dataset_verification_ignores_the_shifts(dataset):
    ensure_shift_suite(dataset, names=["mag_plus1"], split="val")
    assert not any("shifts" in f for f in _dataset_files(dataset))
    assert verify_dataset(dataset, use_marker=False).digest == read_meta(dataset).digest
    assert verify_dataset(dataset).digest == read_meta(dataset).digest  # with the marker


def test_interrupted_shift_leaves_nothing(dataset, tmp_path, monkeypatch):
    root = _copy(dataset, tmp_path / "copy")
    calls = []
    real = shifts_mod.simulate_block

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(shifts_mod, "simulate_block", fail_second)
    with pytest.raises(RuntimeError, match="disk on fire"):
        ensure_shift_suite(root, names=["noise_x2"])
    assert list((root / "shifts" / "test").iterdir()) == []


def test_bad_requests_are_clear(dataset, tmp_path):
    with pytest.raises(DatasetError, match="unknown shifts \\['noise_x3'\\]; allowed: noise_x0.5"):
        ensure_shift_suite(dataset, names=["noise_x3"])
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        ensure_shift_suite(dataset, split="dev")
    with pytest.raises(DatasetError, match="n_per_class 6: allowed 1..5"):
        ensure_shift_suite(dataset, n_per_class=6)
    imported = tmp_path / "imported"
    import_deeplense(write_deeplense(tmp_path / "src", splits=("train",)), imported)
    with pytest.raises(DatasetError, match="imported from DeepLense files .* has no simulated shifts"):
        ensure_shift_suite(imported)


def test_model_iii_has_no_instrument_shift_to_itself(tmp_path):
    root = tmp_path / "iii"
    simulate_dataset(root, "model_iii", {"train": 1, "val": 1, "test": 1}, seed=0, img_size=16)
    assert "instrument_model_iii" not in ensure_shift_suite(root, names=None, split="val", n_per_class=1)
    with pytest.raises(DatasetError, match="its own instrument"):
        ensure_shift_suite(root, names=["instrument_model_iii"])


def test_deeplense_folders_join_a_suite(dataset, tmp_path):
    flat = write_deeplense(tmp_path / "flat", splits=("test",), n=3, size=8) / "test"
    split = load_deeplense_shift(flat)
    assert split.images.shape == (9, 1, 8, 8) and np.bincount(split.labels.numpy()).tolist() == [3, 3, 3]
    assert np.isnan(split.params["m_axion_ev"][:6]).all() and (split.params["m_axion_ev"][6:] > 0).all()
    nested = load_deeplense_shift(tmp_path / "flat")  # <folder>/test/<class>/
    assert nested.meta.digest == split.meta.digest
    with pytest.raises(DatasetError, match="no val/"):
        load_deeplense_shift(tmp_path / "flat", split="val")
    suite = load_shift_suite(dataset, names=["noise_x2"], deeplense=[tmp_path / "flat"])
    assert list(suite) == ["noise_x2", "deeplense:flat"]
