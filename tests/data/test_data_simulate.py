"""Simulated datasets with a fake simulator: reproducibility, atomicity, CLI behaviour."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

import tuner.data.simulate as simulate_mod
from tuner.data import DatasetError, ensure_simulated, load_split, read_meta, simulate_dataset, split_counts
from tuner.cli.simulate import main as simulate_main
from tuner.data.store import SPLITS, SplitWriter, combine_digests

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _writer_threads():
    return [t for t in threading.enumerate() if t.name == "lenstune-dataset-writer"]


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
    assert _writer_threads() == []


def _sequential_reference(root, backend, preset, counts, *, seed, block_size):
    """The dataset written the plain way: each block simulated, then written, in one thread."""
    digests = {}
    for split in SPLITS:
        labels = simulate_mod.split_labels(seed, split, counts[split], len(backend.CLASS_NAMES))
        size = simulate_mod.effective_block_size(block_size, len(labels))
        writer = None
        for block, start in enumerate(range(0, len(labels), size)):
            block_labels = labels[start : start + size]
            bseed = simulate_mod.block_seed(seed, split, block)
            images, params = simulate_mod.simulate_block(backend, preset, block_labels, seed=bseed, block_size=size)
            writer = writer or SplitWriter(root / split, len(labels), images.shape[-1])
            params["sim_seed"] = np.full(len(block_labels), bseed, dtype=np.int64)
            params["sim_index"] = np.arange(len(block_labels), dtype=np.int64)
            writer.write(start, images, block_labels, params)
        digests[split] = writer.close()
    return combine_digests(digests)


def test_writer_thread_writes_what_a_sequential_write_gives(tmp_path, fake_backend, monkeypatch):
    """Blocks written by the writer thread, with the queue full most of the time (a slow disk),
    give the arrays and digest of a plain block-by-block write."""
    counts = split_counts(12)
    want = _sequential_reference(tmp_path / "ref", fake_backend, "fake16", counts, seed=3, block_size=4)
    writing_threads, real_write = set(), SplitWriter.write

    def slow_write(self, *args, **kwargs):
        writing_threads.add(threading.current_thread().name)
        time.sleep(0.01)
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(SplitWriter, "write", slow_write)
    meta = simulate_dataset(tmp_path / "a", "fake16", counts, seed=3, block_size=4, backend=fake_backend)
    assert writing_threads == {"lenstune-dataset-writer"} and _writer_threads() == []
    assert meta.digest == want
    for split in SPLITS:
        got = load_split(tmp_path / "a", split, verify=True)
        np.testing.assert_array_equal(got.images.numpy(), np.load(tmp_path / "ref" / split / "images.npy"))
        np.testing.assert_array_equal(got.labels.numpy(), np.load(tmp_path / "ref" / split / "labels.npy"))
        with np.load(tmp_path / "ref" / split / "params.npz") as ref:
            assert set(got.params) == set(ref.files)
            for key in ref.files:
                np.testing.assert_array_equal(got.params[key], ref[key])


# Digests of small model_ii datasets written before the writer thread and the CUDA pipeline
# existed (same code on the CPU since): existing datasets must keep their recorded digests.
# Float results of CPU kernels can differ between instruction sets, hence the guard.
PINNED_CPU_CAPABILITY = "AVX512"
PINNED_DIGESTS = [
    (dict(seed=7, img_size=32), {"train": 3, "val": 2, "test": 2},
     "cb9fe383b9137348e01c71508b487937d7272aca96f9e1ee4878c919b6e705a5"),
    (dict(seed=7, img_size=32, block_size=4), {"train": 5, "val": 2, "test": 2},
     "15f9155e5cf37b8e30372e63fbe619ffe0660b4c00e1dc11e1d83d94de5db268"),
]


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != PINNED_CPU_CAPABILITY,
                    reason=f"digests pinned on a {PINNED_CPU_CAPABILITY} CPU")
@pytest.mark.parametrize(("kwargs", "counts", "digest"), PINNED_DIGESTS)
def test_cpu_dataset_keeps_its_pinned_digest(tmp_path, kwargs, counts, digest):
    meta = simulate_dataset(tmp_path / "a", "model_ii", counts, **kwargs)
    assert (meta.digest, meta.block_size, meta.compiled) == (digest, kwargs.get("block_size", 128), False)


def test_writer_error_surfaces_in_the_caller_and_leaves_nothing(tmp_path, fake_backend, monkeypatch):
    calls, real_write = [], SplitWriter.write

    def failing_write(self, *args, **kwargs):
        calls.append(threading.current_thread().name)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(SplitWriter, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        simulate_dataset(tmp_path / "a", "fake16", split_counts(20), block_size=4, backend=fake_backend)
    assert calls[1] == "lenstune-dataset-writer"
    assert len(calls) == 2  # nothing written after the failure
    assert list(tmp_path.iterdir()) == [] and _writer_threads() == []


def test_block_writer_drops_jobs_after_a_failure_but_releases_them():
    ran, released = [], []

    def fail():
        raise ValueError("job failed")

    with pytest.raises(ValueError, match="job failed"):
        with simulate_mod._BlockWriter(depth=1) as writer:
            writer.submit(fail, cleanup=lambda: released.append("fail"))
            for i in range(3):  # the failure may surface at any of these submits
                writer.submit(lambda i=i: ran.append(i), cleanup=lambda i=i: released.append(i))
            writer.finish()
    assert ran == [] and released[0] == "fail" and _writer_threads() == []


def test_device_defaults_for_block_size_and_compile(tmp_path, fake_backend):
    assert simulate_mod.default_block_size("cpu") == 128 and simulate_mod.default_block_size("cuda:0") == 2048
    assert simulate_mod.resolve_compile("auto", 30, 16, "cuda") is True
    assert simulate_mod.resolve_compile("auto", 30, 16, "cpu") is False
    assert simulate_mod.resolve_compile(False, 30, 16, "cuda") is False
    meta = simulate_dataset(tmp_path / "a", "fake16", split_counts(5), backend=fake_backend)
    assert (meta.block_size, meta.compiled) == (128, False)


def test_simulate_throughput_measures_and_cleans_up(tmp_path, fake_backend):
    rate = simulate_mod.simulate_throughput("fake16", 40, "cpu", backend=fake_backend, block_size=8,
                                            workdir=tmp_path)
    assert rate > 0 and list(tmp_path.iterdir()) == []


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


def test_cli_writes_refuses_overwrite_and_forces(tmp_path, cli_backend, capsys, monkeypatch):
    monkeypatch.setenv("LENSTUNE_PROGRESS", "1")  # a bar also when stderr is no terminal
    out = tmp_path / "ds"
    args = ["--preset", "fake16", "--n-per-class", "10", "--out", str(out), "--batch-size", "4"]
    assert simulate_main(args) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "simulate fake16" in captured.err  # message and bar
    args.append("--quiet")
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


@pytest.mark.slow
@needs_cuda
@pytest.mark.filterwarnings("error:torch.compile failed")
def test_cuda_block_is_queued_and_copied_without_host_sync():
    """The caller's per-block work on CUDA (simulation, resize, start of the pinned copy) never
    waits for the GPU; the copied block equals a plain blocking simulation."""
    backend = simulate_mod.default_backend()
    labels = simulate_mod.split_labels(0, "train", 700, 3)[:2048]
    kw = dict(block_size=2048, device="cuda", img_size=32, compiled=True)
    simulate_mod.simulate_block_tensors(backend, "model_ii", labels, seed=1, **kw)  # compiles, fills caches
    torch.cuda.synchronize()
    copies = simulate_mod._HostCopies("cuda", 2048)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for seed in (1, 2):
            images, params = simulate_mod.simulate_block_tensors(backend, "model_ii", labels, seed=seed, **kw)
            pending = copies.start([images, *params.values()])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    got_images, *got_values = pending.arrays()
    want_images, want_params = simulate_mod.simulate_block(backend, "model_ii", labels, seed=2, **kw)
    np.testing.assert_array_equal(got_images, want_images)
    for key, value in zip(params, got_values):
        np.testing.assert_array_equal(value, want_params[key])


@pytest.mark.slow
@needs_cuda
@pytest.mark.filterwarnings("error:torch.compile failed")
def test_cuda_dataset_is_bitwise_reproducible_run_to_run(tmp_path):
    counts = {"train": 700, "val": 10, "test": 10}  # train: a full block of 2048 and a padded one
    kwargs = dict(seed=4, img_size=32, device="cuda")
    meta = simulate_dataset(tmp_path / "a", "model_ii", counts, **kwargs)
    assert (meta.block_size, meta.compiled, meta.device) == (2048, True, "cuda")
    assert simulate_dataset(tmp_path / "b", "model_ii", counts, **kwargs).digest == meta.digest
    # a fresh process compiles afresh (inductor caches off) and must give the same bits
    code = ("import sys; from tuner.data import simulate_dataset; "
            f"print(simulate_dataset(sys.argv[1], 'model_ii', {counts!r}, **{kwargs!r}).digest)")
    env = {**os.environ, "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(simulate_mod.__file__)))
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == meta.digest
    train = load_split(tmp_path / "a", "train", verify=True)
    assert train.images.shape == (2100, 1, 32, 32) and float(train.images.min()) == 0.0


@pytest.mark.slow
@needs_cuda
def test_cuda_throughput_is_measured(tmp_path):
    rate = simulate_mod.simulate_throughput("model_ii", 3 * 2048, "cuda", workdir=tmp_path)
    print(f"model_ii on CUDA: {rate:.0f} images/s")
    assert rate > 0 and list(tmp_path.iterdir()) == []
