"""Fresh training data: reproducible from (seed, epoch), different between epochs and seeds,
never the stored train split, prepared like the stored images, on its own seed stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tuner.data import DatasetError, import_deeplense, load_split, read_meta, simulate_dataset
from tuner.data.fresh import fresh_block_seed, simulate_training_epoch
from tuner.data.simulate import block_seed, split_labels
from tuner.data.store import SPLITS
from tuner.lensing.conditions import ObservingConditions

from tests.data.conftest import write_deeplense

COUNTS = {"train": 4, "val": 1, "test": 1}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("fresh") / "model_ii"
    simulate_dataset(root, "model_ii", COUNTS, seed=0, img_size=32, block_size=5)
    return root


def test_epochs_are_reproducible_and_differ(dataset):
    a, la = simulate_training_epoch(dataset, seed=1, epoch=0, block_size=5)
    b, lb = simulate_training_epoch(read_meta(dataset), seed=1, epoch=0, block_size=5)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert a.shape == (12, 1, 32, 32) and a.dtype == torch.float32 and la.dtype == torch.int64
    assert torch.bincount(la).tolist() == [4, 4, 4]
    assert a.amin().item() == 0.0 and a.amax().item() == 1.0
    for other in (dict(seed=1, epoch=1), dict(seed=2, epoch=0)):
        c, _ = simulate_training_epoch(dataset, block_size=5, **other)
        assert not (c[:, None] == a[None]).flatten(2).all(dim=2).any(), other  # no image repeats


def test_an_epoch_is_never_the_stored_split(dataset):
    stored = load_split(dataset, "train").images
    # the dataset's own seed and block size: only the seed stream differs
    fresh, _ = simulate_training_epoch(dataset, seed=0, epoch=0, block_size=5)
    assert not (fresh[:, None] == stored[None]).flatten(2).all(dim=2).any()


def test_seed_streams_are_disjoint_from_the_writer():
    written = {block_seed(s, split, k) for s in range(3) for split in SPLITS for k in range(50)}
    fresh = {fresh_block_seed(s, e, k) for s in range(3) for e in range(20) for k in range(50)}
    assert len(fresh) == 3 * 20 * 50 and not written & fresh


def test_counts_conditions_and_preparation(dataset):
    images, labels = simulate_training_epoch(dataset, {"no_sub": 2, "axion": 3}, seed=0, epoch=0)
    assert torch.bincount(labels, minlength=3).tolist() == [2, 0, 3]
    # the same systems at the native size, prepared by the one preparation, are the 32 px images
    from tuner.data.preprocess import prepare_images

    meta = read_meta(dataset)
    native = meta.model_copy(update=dict(image_size=64))
    full, _ = simulate_training_epoch(native, {"no_sub": 2, "axion": 3}, seed=0, epoch=0)
    assert torch.equal(prepare_images(full, 32), images)
    wide = ObservingConditions(noise_scale=(0.5, 4.0), subpixel_shift_px=0.5)
    varied, same_labels = simulate_training_epoch(dataset, 3, seed=0, epoch=0, conditions=wide)
    plain, _ = simulate_training_epoch(dataset, 3, seed=0, epoch=0)
    assert torch.equal(same_labels, simulate_training_epoch(dataset, 3, seed=0, epoch=0)[1])
    assert not torch.equal(varied, plain)


def test_dataset_conditions_are_the_default(tmp_path):
    wide = ObservingConditions(psf_fwhm_scale=(0.75, 1.5))
    root = tmp_path / "wide"
    simulate_dataset(root, "model_ii", COUNTS, seed=0, img_size=32, conditions=wide)
    own, _ = simulate_training_epoch(root, 2, seed=0, epoch=0)
    explicit, _ = simulate_training_epoch(root, 2, seed=0, epoch=0, conditions=wide)
    preset, _ = simulate_training_epoch(root, 2, seed=0, epoch=0, conditions=ObservingConditions())
    assert torch.equal(own, explicit) and not torch.equal(own, preset)


def test_bad_requests(dataset, tmp_path):
    with pytest.raises(DatasetError, match="seed and epoch must be >= 0"):
        simulate_training_epoch(dataset, seed=0, epoch=-1)
    with pytest.raises(DatasetError, match="unknown classes \\['dog'\\]"):
        simulate_training_epoch(dataset, {"dog": 1}, seed=0, epoch=0)
    imported = tmp_path / "imported"
    import_deeplense(write_deeplense(tmp_path / "src"), imported)
    with pytest.raises(DatasetError, match="needs a simulated dataset"):
        simulate_training_epoch(imported, seed=0, epoch=0)


def test_labels_do_not_repeat_the_writer_permutation(dataset):
    _, labels = simulate_training_epoch(dataset, seed=0, epoch=0)
    assert not np.array_equal(labels.numpy(), split_labels(0, "train", 4, 3))
