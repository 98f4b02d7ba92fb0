"""Integrity faults: damaged datasets, checkpoints and registered models are refused with a message
naming the file, never trained on or predicted with.

Datasets: flipped bytes, a damaged ``.npy`` header, truncated data, a broken ``params.npz`` and
NaN pixels (stored with matching digests, so only the pixel check can catch them); the verified
marker and its invalidation. Weights: truncation, header garbage and 4,000 bytes set to 0xFF,
in a bare file, a checkpoint (with the fallback to the newest intact one) and a registered
model behind ``lenstune predict`` and the pyfunc; a model whose outputs are NaN.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tuner.data import DatasetError, ensure_simulated, load_split, read_meta
from tuner.data import store
from tuner.data.store import SPLITS, VERIFIED_FILE, combine_digests, split_digest, verify_dataset
from tuner.models import io
from tuner.training import checkpoint as ckpt

MICRO = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0,
         "drop_rate": 0.0, "drop_path_rate": 0.0}


# ------------------------------------------------------------------------------- datasets


@pytest.fixture(scope="module")
def clean_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clean") / "ds"
    return ensure_simulated(root, "model_ii", n_per_class=5, seed=0, img_size=32)


@pytest.fixture
def dataset(clean_dataset, tmp_path) -> Path:
    """A private copy of the clean dataset, without a verified marker."""
    root = tmp_path / "ds"
    shutil.copytree(clean_dataset, root, ignore=shutil.ignore_patterns(VERIFIED_FILE))
    return root


def _data_offset(path: Path) -> int:
    with open(path, "rb") as handle:
        np.lib.format.read_magic(handle)
        np.lib.format.read_array_header_1_0(handle)
        return handle.tell()


def _overwrite(path: Path, offset: int, data: bytes, *, keep_mtime: bool = False) -> None:
    st = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_clean_dataset_verifies_and_writes_marker(dataset):
    meta = verify_dataset(dataset)
    assert meta == read_meta(dataset)
    marker = json.loads((dataset / VERIFIED_FILE).read_text())
    assert marker["digest"] == meta.digest
    assert set(marker["files"]) == {"meta.json"} | {
        f"{s}/{f}" for s in SPLITS for f in ("images.npy", "labels.npy", "params.npz")}
    load_split(dataset, "train", verify=True)  # the hidden marker is no part of the data


def test_flipped_image_bytes_are_named(dataset):
    path = dataset / "train" / "images.npy"
    _overwrite(path, _data_offset(path) + 1000, b"\x5a\xa5\x5a\xa5")
    with pytest.raises(DatasetError) as info:
        verify_dataset(dataset)
    message = str(info.value)
    assert "split 'train' changed since it was written" in message
    assert str(path) in message and "re-simulate" in message
    with pytest.raises(DatasetError, match=r"digest .* does not match"):
        load_split(dataset, "train", verify=True)
    assert len(load_split(dataset, "val", verify=True)) == 3  # other splits are untouched


@pytest.mark.parametrize("damage", ["header_brace", "header_keys", "truncated_header",
                                    "truncated_data", "empty"])
def test_damaged_npy_is_a_dataset_error_naming_the_file(dataset, damage):
    path = dataset / "val" / "images.npy"
    raw = bytearray(path.read_bytes())
    if damage == "header_brace":  # numpy itself raises tokenize.TokenError here
        raw[20] = ord("{")
    elif damage == "header_keys":
        raw[12] = ord("(")
    elif damage == "truncated_header":
        raw = raw[:60]
    elif damage == "truncated_data":
        raw = raw[: len(raw) - 100]
    else:
        raw = bytearray()
    path.write_bytes(bytes(raw))
    for check in (lambda: verify_dataset(dataset), lambda: load_split(dataset, "val")):
        with pytest.raises(DatasetError) as info:
            check()
        assert f"corrupt array file {path}" in str(info.value)
        assert "\n" not in str(info.value)
    if damage == "truncated_data":
        assert "truncated" in str(info.value)


def test_damaged_params_are_named(dataset):
    path = dataset / "test" / "params.npz"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 50] = b"\x00" * 50
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=f"corrupt parameter file {path}"):
        verify_dataset(dataset)


def _store_with_digests(root: Path, split: str, images: np.ndarray) -> None:
    """Rewrite a split's images and meta.json's digests to match: the data is 'as written'."""
    np.save(root / split / "images.npy", images)
    labels = np.load(root / split / "labels.npy")
    with np.load(root / split / "params.npz") as npz:
        params = {k: npz[k] for k in npz.files}
    meta = read_meta(root)
    digests = {**meta.split_digests, split: split_digest(images, labels, params)}
    store.write_meta(root, meta.model_copy(update={"split_digests": digests,
                                                   "digest": combine_digests(digests)}))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_pixels_are_refused(dataset, value):
    images = np.load(dataset / "train" / "images.npy")
    images[4, 0, 7, 9] = value
    images[6, 0, 0, 0] = value
    _store_with_digests(dataset, "train", images)
    load_split(dataset, "val", verify=True)  # digests agree: only the pixel check catches it
    with pytest.raises(DatasetError) as info:
        verify_dataset(dataset)
    message = str(info.value)
    assert str(dataset / "train" / "images.npy") in message
    assert "split 'train'" in message and "NaN or infinite" in message and "image 4" in message
    assert not (dataset / VERIFIED_FILE).exists()
    with pytest.raises(DatasetError, match="image 4"):
        load_split(dataset, "train", verify=True)


def test_marker_skips_hashing_until_a_file_is_touched(dataset, monkeypatch):
    calls = []
    real = store.split_digest
    monkeypatch.setattr(store, "split_digest", lambda *a, **k: calls.append(1) or real(*a, **k))
    verify_dataset(dataset)
    assert len(calls) == 3
    path = dataset / "train" / "images.npy"
    # A change that keeps size and mtime goes unseen: proof that the hashing was skipped.
    _overwrite(path, _data_offset(path) + 64, b"\x01\x02\x03\x04", keep_mtime=True)
    verify_dataset(dataset)
    assert len(calls) == 3
    # Touching the file invalidates the marker: the full check runs and names the file.
    path.touch()
    with pytest.raises(DatasetError) as info:
        verify_dataset(dataset)
    assert f"changed since it was last verified: {path}" in str(info.value)
    assert len(calls) == 4  # train failed; val and test not reached


def test_marker_is_bypassed_by_use_marker_false_and_rewritten(dataset, monkeypatch):
    verify_dataset(dataset)
    calls = []
    real = store.split_digest
    monkeypatch.setattr(store, "split_digest", lambda *a, **k: calls.append(1) or real(*a, **k))
    verify_dataset(dataset, use_marker=False)
    assert len(calls) == 3
    (dataset / VERIFIED_FILE).write_text("{not json")  # a damaged marker is ignored
    verify_dataset(dataset)
    assert len(calls) == 6
    assert json.loads((dataset / VERIFIED_FILE).read_text())["format"] == 1


def test_read_only_dataset_verifies_without_marker(dataset, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Read-only file system", str(dataset))

    monkeypatch.setattr(store.tempfile, "mkstemp", refuse)
    assert verify_dataset(dataset).digest == read_meta(dataset).digest
    assert verify_dataset(dataset).digest == read_meta(dataset).digest
    assert not (dataset / VERIFIED_FILE).exists()
    assert not [p for p in dataset.iterdir() if p.name.startswith(VERIFIED_FILE)]


# -------------------------------------------------------------------------------- weights


def _state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"a.weight": torch.randn(40, 50), "a.bias": torch.randn(40),
            "b.weight": torch.randn(30, 40).to(torch.bfloat16), "steps": torch.tensor(3)}


def test_weights_round_trip_records_sha256(tmp_path):
    state = _state()
    state["tied"] = state["a.weight"]
    path = io.save_weights(state, tmp_path / "w.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        assert len(handle.metadata()[io.DIGEST_KEY]) == 64
    loaded = io.load_weights(path)
    assert loaded.keys() == state.keys() and loaded["tied"] is loaded["a.weight"]
    for name in state:
        assert torch.equal(loaded[name], state[name]), name


def test_weights_without_sha256_load_unchecked(tmp_path):
    from safetensors.torch import save_file

    state = _state()
    save_file(state, str(tmp_path / "old.safetensors"))  # an older file: no metadata at all
    assert io.load_weights(tmp_path / "old.safetensors").keys() == state.keys()


def _damage(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    if how == "truncated":
        raw = raw[: len(raw) // 2]
    elif how == "header_garbage":
        raw[12:40] = b"garbage garbage garbage ####"
    elif how == "ff_4000":  # 4,000 bytes of the data set to 0xFF: NaN float32 weights
        start = len(raw) - 4000 - 500
        raw[start : start + 4000] = b"\xff" * 4000
    else:
        raise AssertionError(how)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("how, message", [("truncated", "damaged or truncated"),
                                          ("header_garbage", "damaged or truncated"),
                                          ("ff_4000", "SHA-256")])
def test_damaged_weights_are_a_weights_error(tmp_path, how, message):
    path = io.save_weights(_state(), tmp_path / "w.safetensors")
    _damage(path, how)
    with pytest.raises(io.WeightsError, match=message) as info:
        io.load_weights(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_weights_that_do_not_fit_the_network_are_named(tmp_path):
    config = io.ModelConfig(family="scratch", img_size=32, model=MICRO)
    path = io.save_weights({"x": torch.zeros(3)}, tmp_path / "w.safetensors")
    with pytest.raises(io.WeightsError, match=f"{path} does not fit"):
        io.load_network(config, path)


# ----------------------------------------------------------------------------- checkpoints


def _trial_folder(tmp_path: Path, n: int = 3) -> tuple[Path, list[torch.nn.Module]]:
    trial = tmp_path / "trial"
    nets = []
    for i in range(n):
        torch.manual_seed(i)
        net = torch.nn.Linear(200, 30)  # 24 kB of weights: room for 4,000 bytes of 0xFF
        opt = torch.optim.AdamW(net.parameters())
        net(torch.randn(4, 200)).sum().backward()
        opt.step()
        ckpt.save_checkpoint(trial / f"checkpoint_{i:06d}", model=net, config={"i": i},
                             optimizer=opt, state={"epoch": i + 1})
        nets.append(net)
    return trial, nets


def test_damaged_checkpoint_names_folder_and_falls_back(tmp_path):
    trial, nets = _trial_folder(tmp_path)
    newest = trial / "checkpoint_000002"
    _damage(newest / ckpt.MODEL_FILE, "truncated")
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.restore_weights(torch.nn.Linear(200, 30), newest)
    assert f"checkpoint {newest}" in str(info.value) and ckpt.MODEL_FILE in str(info.value)

    choice = ckpt.newest_intact_checkpoint(trial)
    assert choice.path == trial / "checkpoint_000001"
    assert [p for p, _ in choice.skipped] == [newest]
    assert "checkpoint_000002" in choice.warning() and "falling back to" in choice.warning()
    fresh = ckpt.restore_weights(torch.nn.Linear(200, 30), choice.path)
    assert torch.equal(fresh.weight, nets[1].weight)

    # the next one's optimizer file is damaged too; a list of folders is taken oldest first
    _damage(trial / "checkpoint_000001" / ckpt.OPTIMIZER_FILE, "ff_4000")
    choice = ckpt.newest_intact_checkpoint(ckpt.trial_checkpoints(trial))
    assert choice.path == trial / "checkpoint_000000" and len(choice.skipped) == 2
    opt = torch.optim.AdamW(torch.nn.Linear(200, 30).parameters())
    with pytest.raises(ckpt.CheckpointError, match="checkpoint_000001"):
        ckpt.load_optimizer(opt, trial / "checkpoint_000001")

    (trial / "checkpoint_000000" / ckpt.STATE_FILE).write_text("{epoch")
    choice = ckpt.newest_intact_checkpoint(trial)
    assert choice.path is None and len(choice.skipped) == 3
    assert "no intact checkpoint left" in choice.warning()
    assert ckpt.newest_intact_checkpoint(tmp_path / "trial").skipped[0][0] == newest


def test_intact_checkpoints_give_no_warning(tmp_path):
    trial, _ = _trial_folder(tmp_path, n=2)
    choice = ckpt.newest_intact_checkpoint(trial)
    assert choice.path == trial / "checkpoint_000001" and choice.warning() is None


# ------------------------------------------------------------------------- registered model


@pytest.fixture(scope="module")
def registered_model(tmp_path_factory) -> Path:
    """A local MLflow model folder of a micro scratch network, as promotion registers one."""
    from tuner.models import build_model
    from tuner.registry.pyfunc import save_registry_model

    tmp = tmp_path_factory.mktemp("model")
    config = io.ModelConfig(family="scratch", img_size=32, model=MICRO)
    torch.manual_seed(0)
    net = build_model("scratch", img_size=32, **MICRO)
    io.save_weights(net, tmp / "w.safetensors")
    images = np.random.default_rng(0).random((2, 1, 32, 32), dtype=np.float32)
    return save_registry_model(tmp / "model", config, tmp / "w.safetensors", images)


@pytest.fixture
def model_copy(registered_model, tmp_path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(registered_model, folder)
    return folder


@pytest.fixture
def images_npy(tmp_path) -> Path:
    path = tmp_path / "images.npy"
    np.save(path, np.random.default_rng(1).random((3, 1, 32, 32), dtype=np.float32))
    return path


def test_intact_registered_model_predicts(model_copy, images_npy, tmp_path):
    from tuner.cli.predict import main as predict_main

    out = tmp_path / "out.csv"
    assert predict_main([str(images_npy), "--model", str(model_copy), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 4


@pytest.mark.parametrize("how", ["truncated", "header_garbage", "ff_4000"])
def test_predict_refuses_damaged_registered_model(model_copy, images_npy, tmp_path, capsys, how):
    from tuner.cli import EXIT_USAGE
    from tuner.cli.predict import main as predict_main

    weights = model_copy / "artifacts" / io.WEIGHTS_FILE
    _damage(weights, how)
    out = tmp_path / "out.csv"
    code = predict_main([str(images_npy), "--model", str(model_copy), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert err.startswith("lenstune predict: error: ") and err.count("\n") == 1
    assert "Traceback" not in err and str(weights) in err and f"model {model_copy}" in err
    assert not out.exists() and not list(tmp_path.glob(".out.csv*"))


def test_non_finite_outputs_are_refused(tmp_path, images_npy, capsys):
    import mlflow

    from tuner.cli import EXIT_FAILED
    from tuner.cli.predict import main as predict_main
    from tuner.models import build_model
    from tuner.registry.pyfunc import ModelOutputError, save_registry_model

    config = io.ModelConfig(family="scratch", img_size=32, model=MICRO)
    net = build_model("scratch", img_size=32, **MICRO)
    with torch.no_grad():
        for param in net.parameters():
            param.fill_(float("nan"))
    io.save_weights(net, tmp_path / "w.safetensors")  # NaN weights, intact file
    images = np.load(images_npy)
    model_dir = save_registry_model(tmp_path / "nan_model", config, tmp_path / "w.safetensors",
                                    images[:1])
    capsys.readouterr()  # MLflow's log lines while saving
    out = tmp_path / "out.csv"
    code = predict_main([str(images_npy), "--model", str(model_dir), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == EXIT_FAILED and not out.exists()
    assert "NaN or infinite probabilities for 3 of 3 image(s) (first: index 0)" in err
    assert err.count("\n") == 1
    pyfunc = mlflow.pyfunc.load_model(str(model_dir))
    with pytest.raises(ModelOutputError, match="NaN or infinite probabilities"):
        pyfunc.predict(images)


def test_pyfunc_refuses_damaged_weights_at_load(model_copy):
    import mlflow

    weights = model_copy / "artifacts" / io.WEIGHTS_FILE
    _damage(weights, "ff_4000")
    with pytest.raises(Exception, match="SHA-256") as info:
        mlflow.pyfunc.load_model(str(model_copy))
    assert str(weights.name) in str(info.value)


# ------------------------------------------------------------ a study on a damaged dataset


def _study_on(dataset: Path, tmp_path: Path):
    import subprocess
    import sys

    from tests.study.studies import REPO, ray_env

    runs = tmp_path / "runs"
    proc = subprocess.run([sys.executable, "tuner/run.py", "--family", "vit", "--profile", "micro",
                           "--data", str(dataset), "--runs-dir", str(runs)], cwd=REPO,
                          env=ray_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-2000:]
    assert "Traceback" not in proc.stderr and not runs.exists()  # refused before any work
    return proc.stderr.strip().splitlines()[-1]


def test_a_study_refuses_flipped_bytes_naming_the_file(dataset, tmp_path):
    path = dataset / "train" / "images.npy"
    _overwrite(path, _data_offset(path) + 1000, b"\x5a\xa5\x5a\xa5")
    line = _study_on(dataset, tmp_path)
    assert line.startswith("lenstune tune: error: ") and str(path) in line
    assert "changed since it was written" in line


def test_a_study_refuses_a_damaged_header_naming_the_file(dataset, tmp_path):
    path = dataset / "val" / "images.npy"
    raw = bytearray(path.read_bytes())
    raw[20] = ord("{")
    path.write_bytes(bytes(raw))
    assert f"corrupt array file {path}" in _study_on(dataset, tmp_path)


def test_a_study_refuses_nan_pixels(dataset, tmp_path):
    images = np.load(dataset / "train" / "images.npy")
    images[4, 0, 7, 9] = np.nan
    _store_with_digests(dataset, "train", images)
    line = _study_on(dataset, tmp_path)
    assert "NaN or infinite" in line and "image 4" in line
