"""Simulated datasets with a fake simulator: reproducibility, atomicity, CLI behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tuner.data.simulate as simulate_mod
from tuner.data import DatasetError, ensure_simulated, load_split, read_meta, simulate_dataset, split_counts
from tuner.data.simulate_cli import main as simulate_main
from tuner.data.store import SPLITS


def _arrays(root):
    out = {}
    for split in SPLITS:
        data = load_split(root, split, verify=True)
        out[split] = (data.images.numpy().copy(), data.labels.numpy().copy(), data.params)
    return out


def test_same_seed_gives_identical_dataset(tmp_path, fake_backend):
    a = simulate_dataset(tmp_path / "a", "fake16", split_counts(9), seed=3, block_size=4, backend=fake_backend)
    b = simulate_dataset(tmp_path / "b", "fake16", split_counts(9), seed=3, block_size=4, backend=fake_backend)
    assert a.digest == b.digest
    assert (tmp_path / "a" / "meta.json").read_text() == (tmp_path / "b" / "meta.json").read_text()
    arrays_a, arrays_b = _arrays(tmp_path / "a"), _arrays(tmp_path / "b")
    for split in SPLITS:
        np.testing.assert_array_equal(arrays_a[split][0], arrays_b[split][0])
        np.testing.assert_array_equal(arrays_a[split][1], arrays_b[split][1])


def test_other_seed_differs_and_labels_ignore_block_size(tmp_path, fake_backend):
    a = simulate_dataset(tmp_path / "a", "fake16", split_counts(9), seed=3, block_size=4, backend=fake_backend)
    c = simulate_dataset(tmp_path / "c", "fake16", split_counts(9), seed=4, block_size=4, backend=fake_backend)
    d = simulate_dataset(tmp_path / "d", "fake16", split_counts(9), seed=3, block_size=5, backend=fake_backend)
    assert len({a.digest, c.digest, d.digest}) == 3
    assert d.block_size == 5
    np.testing.assert_array_equal(
        load_split(tmp_path / "a", "train").labels, load_split(tmp_path / "d", "train").labels
    )
    assert not np.array_equal(load_split(tmp_path / "a", "train").labels, load_split(tmp_path / "c", "train").labels)


def test_blocks_have_distinct_seeds(tmp_path, fake_backend):
    simulate_dataset(tmp_path / "a", "fake16", split_counts(10), block_size=4, backend=fake_backend)
    params = load_split(tmp_path / "a", "train").params
    assert len(set(params["sim_seed"].tolist())) == 5  # 18 images in blocks of 4
    assert params["sim_index"].tolist()[:6] == [0, 1, 2, 3, 0, 1]
    # Padding the last block keeps the simulator's batch shape fixed
    assert simulate_mod.block_seed(0, "train", 0) != simulate_mod.block_seed(0, "val", 0)


def test_img_size_resizes_and_renormalises(tmp_path, fake_backend):
    meta = simulate_dataset(tmp_path / "a", "fake24", split_counts(5), img_size=12, block_size=8, backend=fake_backend)
    assert (meta.image_size, meta.native_image_size) == (12, 24)
    images = load_split(tmp_path / "a", "val").images
    assert images.shape[-2:] == (12, 12)
    np.testing.assert_allclose(images.amax(dim=(1, 2, 3)).numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(images.amin(dim=(1, 2, 3)).numpy(), 0.0, atol=1e-6)
    with pytest.raises(DatasetError, match="exceeds preset fake24's 24 px"):
        simulate_dataset(tmp_path / "b", "fake24", split_counts(5), img_size=32, backend=fake_backend)
    assert not (tmp_path / "b").exists()


def test_interrupted_simulation_leaves_nothing(tmp_path, fake_backend, monkeypatch):
    calls = {"n": 0}
    real = fake_backend.simulate_batch

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(fake_backend, "simulate_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        simulate_dataset(tmp_path / "a", "fake16", split_counts(10), block_size=4, backend=fake_backend)
    assert list(tmp_path.iterdir()) == []


def test_ensure_simulated_reuses_and_refuses_mismatch(tmp_path, fake_backend, monkeypatch):
    root = ensure_simulated(tmp_path / "a", "fake16", 10, seed=1, backend=fake_backend)
    digest = read_meta(root).digest

    def must_not_run(*args, **kwargs):
        raise AssertionError("simulated again although a matching dataset exists")

    monkeypatch.setattr(fake_backend, "simulate_batch", must_not_run)
    assert ensure_simulated(root, "fake16", 10, seed=1, backend=fake_backend) == root
    assert read_meta(root).digest == digest
    with pytest.raises(DatasetError, match="seed: found 1, wanted 2"):
        ensure_simulated(root, "fake16", 10, seed=2, backend=fake_backend)
    with pytest.raises(DatasetError, match="image_size: found 16, wanted 8"):
        ensure_simulated(root, "fake16", 10, seed=1, img_size=8, backend=fake_backend)


def test_bad_arguments_name_allowed_values(tmp_path, fake_backend):
    with pytest.raises(ValueError, match="allowed: fake16, fake24"):
        simulate_dataset(tmp_path / "a", "model_x", split_counts(5), backend=fake_backend)
    with pytest.raises(DatasetError, match="allowed: cpu"):
        simulate_dataset(tmp_path / "a", "fake16", split_counts(5), device="tpu", backend=fake_backend)
    if not torch.cuda.is_available():
        with pytest.raises(DatasetError, match="CUDA is not available here; allowed: cpu"):
            simulate_dataset(tmp_path / "a", "fake16", split_counts(5), device="cuda", backend=fake_backend)
    assert not (tmp_path / "a").exists()


@pytest.fixture
def cli_backend(fake_backend, monkeypatch):
    monkeypatch.setattr(simulate_mod, "default_backend", lambda: fake_backend)
    return fake_backend


def test_cli_writes_refuses_overwrite_and_forces(tmp_path, cli_backend, capsys):
    out = tmp_path / "ds"
    args = ["--preset", "fake16", "--n-per-class", "10", "--out", str(out), "--batch-size", "4", "--quiet"]
    assert simulate_main(args) == 0
    assert "wrote" in capsys.readouterr().out
    first = read_meta(out).digest
    assert simulate_main(args + ["--seed", "5"]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert read_meta(out).digest == first
    assert simulate_main(args + ["--seed", "5", "--force"]) == 0
    assert read_meta(out).seed == 5 and read_meta(out).digest != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_cli_split_options_and_bad_values(tmp_path, cli_backend, capsys):
    out = tmp_path / "ds"
    base = ["--preset", "fake16", "--n-per-class", "10", "--out", str(out), "--quiet"]
    assert simulate_main(base + ["--split-counts", "3", "1", "2"]) == 0
    assert read_meta(out).counts["test"] == {"no_sub": 2, "cdm": 2, "axion": 2}
    assert simulate_main(base + ["--split-fractions", "0.5", "0.5", "0.5", "--force"]) == 2
    assert "summing to 1" in capsys.readouterr().err
    assert simulate_main(["--preset", "nope", "--n-per-class", "10", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "allowed: fake16, fake24" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_unwritable_out_is_a_clear_error(tmp_path, cli_backend, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "ds"
    assert simulate_main(["--preset", "fake16", "--n-per-class", "10", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"nothing was written to {out}" in err and str(blocker) in err and "Traceback" not in err
    assert blocker.read_text() == "not a folder"


def test_compile_choice_resolves_and_reaches_the_simulator(tmp_path, fake_backend, monkeypatch, capsys):
    assert simulate_mod.resolve_compile("auto", 1000, 64) is False  # micro datasets stay eager
    assert simulate_mod.resolve_compile(None, 10**5, 64) is True
    assert simulate_mod.resolve_compile("no", 10**9, 150) is False and simulate_mod.resolve_compile(True, 1, 8)
    with pytest.raises(DatasetError, match="auto, yes, no"):
        simulate_dataset(tmp_path / "bad", "fake16", split_counts(5), compile="sometimes", backend=fake_backend)
    seen, real = [], fake_backend.simulate_batch

    def recording(*args, compiled=False, **kwargs):
        seen.append(compiled)
        return real(*args, **kwargs)

    monkeypatch.setattr(simulate_mod, "default_backend", lambda: fake_backend)
    monkeypatch.setattr(fake_backend, "simulate_batch", recording)
    base = ["--preset", "fake16", "--n-per-class", "10", "--batch-size", "4", "--quiet"]
    assert simulate_main(base + ["--out", str(tmp_path / "c"), "--compile"]) == 0
    assert seen and all(seen)
    seen.clear()
    assert simulate_main(base + ["--out", str(tmp_path / "e")]) == 0  # auto: 30 images of 16 px
    assert seen and not any(seen)
    assert read_meta(tmp_path / "c").digest == read_meta(tmp_path / "e").digest  # the fake ignores the flag
    assert read_meta(tmp_path / "c").compiled is True
    assert read_meta(tmp_path / "e").compiled is False
