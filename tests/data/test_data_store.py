"""Store: writing, loading, validation, digest, atomic replacement."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tuner.data import DatasetError, load_split, read_meta, simulate_dataset, split_counts
from tuner.data.store import SPLITS, staged_dataset


@pytest.fixture
def dataset(tmp_path, fake_backend):
    root = tmp_path / "ds"
    simulate_dataset(root, "fake16", split_counts(10), block_size=4, backend=fake_backend)
    return root


def test_layout_shapes_and_meta(dataset):
    meta = read_meta(dataset)
    assert meta.source == "simulated" and meta.preset == "fake16" and meta.seed == 0
    assert meta.class_names == ("no_sub", "cdm", "axion")
    assert meta.counts == {"train": dict.fromkeys(meta.class_names, 6),
                           "val": dict.fromkeys(meta.class_names, 2),
                           "test": dict.fromkeys(meta.class_names, 2)}
    for split in SPLITS:
        data = load_split(dataset, split, verify=True)
        n = meta.n_images(split)
        assert data.images.shape == (n, 1, 16, 16) and data.images.dtype == torch.float32
        assert data.labels.shape == (n,) and data.labels.dtype == torch.int64
        assert torch.bincount(data.labels, minlength=3).tolist() == [meta.counts[split][c] for c in meta.class_names]
        assert set(data.params) == set(meta.param_names) >= {"sim_seed", "sim_index", "m_axion_ev"}
        assert float(data.images.min()) >= 0 and float(data.images.max()) <= 1
        assert not (dataset / split / "images.npy").stat().st_size == 0
    assert not [p for p in dataset.parent.iterdir() if p.name.startswith(".")]  # temp folder gone


def test_images_are_memory_mapped_and_file_untouched(dataset):
    data = load_split(dataset, "train")
    address = data.images.data_ptr()
    mapped = []  # file-backed mappings of this process that hold the tensor's first byte
    for line in open("/proc/self/maps"):
        fields = line.split()
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        if lo <= address < hi and len(fields) >= 6:
            mapped.append(fields[5])
    assert mapped == [str((dataset / "train" / "images.npy").resolve())]
    data.images[0] += 5  # copy-on-write: the file must stay as written
    assert load_split(dataset, "train", verify=True).images.max() <= 1


def test_split_counts_rules():
    assert split_counts(1000) == {"train": 700, "val": 150, "test": 150}
    assert split_counts(10, [0.8, 0.1, 0.1]) == {"train": 8, "val": 1, "test": 1}
    assert split_counts(0, counts=[5, 2, 3]) == {"train": 5, "val": 2, "test": 3}
    with pytest.raises(DatasetError, match="summing to 1"):
        split_counts(100, [0.5, 0.2, 0.2])
    with pytest.raises(DatasetError, match=r"no images in \['val', 'test'\]"):
        split_counts(3)
    with pytest.raises(DatasetError, match=">= 1"):
        split_counts(10, counts=[5, 0, 1])


def test_digest_catches_modified_image(dataset):
    path = dataset / "val" / "images.npy"
    images = np.load(path, mmap_mode="r+")
    images[1, 0, 3, 3] += 0.25
    images.flush()
    del images
    load_split(dataset, "val")  # shapes still fine
    with pytest.raises(DatasetError, match="digest .* does not match"):
        load_split(dataset, "val", verify=True)


def test_digest_catches_modified_params(dataset):
    path = dataset / "test" / "params.npz"
    with np.load(path) as npz:
        params = {k: npz[k] for k in npz.files}
    params["source_x_arcsec"] = params["source_x_arcsec"] + 1e-9
    np.savez(path, **params)
    with pytest.raises(DatasetError, match="digest"):
        load_split(dataset, "test", verify=True)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: (r / "train" / "labels.npy").unlink(), "missing file"),
        (lambda r: (r / "train" / "images.npy").write_bytes(b"garbage"), "corrupt array file"),
        (lambda r: (r / "train" / "params.npz").write_bytes(b"garbage"), "corrupt parameter file"),
        (lambda r: np.save(r / "train" / "labels.npy", np.full(18, 7, dtype=np.int64)), r"labels must lie in \[0, 2\]"),
        (lambda r: np.save(r / "train" / "labels.npy", np.zeros(18, dtype=np.int32)), "expected int64"),
        (lambda r: np.save(r / "train" / "images.npy", np.zeros((18, 1, 8, 8), np.float32)), r"expected float32 \(18, 1, 16, 16\)"),
        (lambda r: np.save(r / "train" / "labels.npy", np.zeros(18, dtype=np.int64)), "per-class counts"),
        (lambda r: (r / "meta.json").write_text("{not json"), "not a valid lenstune dataset meta"),
    ],
)
def test_bad_store_raises_clear_error(dataset, damage, message):
    damage(dataset)
    with pytest.raises(DatasetError, match=message):
        load_split(dataset, "train")


def test_unknown_split_and_missing_dataset(dataset, tmp_path):
    with pytest.raises(DatasetError, match="allowed: train, val, test"):
        load_split(dataset, "holdout")
    with pytest.raises(DatasetError, match="no dataset at"):
        read_meta(tmp_path / "nothing")


def test_meta_version_mismatch_rejected(dataset):
    meta = json.loads((dataset / "meta.json").read_text())
    meta["format_version"] = 99
    (dataset / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="format_version 99"):
        read_meta(dataset)


def test_staged_dataset_refuses_and_cleans_up(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "meta.json").write_text("{}")
    with pytest.raises(DatasetError, match="already exists"):
        with staged_dataset(root):
            pass
    with pytest.raises(RuntimeError):
        with staged_dataset(root, force=True) as tmp:
            (tmp / "half.npy").write_bytes(b"x")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temp left, old intact
    assert (root / "meta.json").read_text() == "{}"


def test_force_never_replaces_a_foreign_folder(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "thesis.tex").write_text("precious")
    with pytest.raises(DatasetError, match="not a lenstune dataset"):
        with staged_dataset(root, force=True):
            pass
    assert (root / "thesis.tex").read_text() == "precious"


def test_staging_left_by_a_killed_writer_is_removed_on_the_next_write(tmp_path):
    import os
    import socket
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    root = tmp_path / "ds"
    abandoned = tmp_path / f".ds.tmp-{host}-{dead.pid}-abc"
    live = tmp_path / f".ds.tmp-{host}-{os.getpid()}-def"       # a writer still running
    elsewhere = tmp_path / f".ds.tmp-otherhost-{dead.pid}-ghi"  # another node's writer
    for folder in (abandoned, live, elsewhere):
        folder.mkdir()
    with staged_dataset(root) as tmp:
        (tmp / "meta.json").write_text("{}")
    assert not abandoned.exists() and live.exists() and elsewhere.exists() and root.is_dir()
