"""A study whose model input size differs from the dataset's image size (micro profile, 32 px
networks, on a native 64 px model_ii dataset) promotes its champion, and the champion prepares
the user's raw 64 px images exactly as the trials prepared them."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.study.studies import REPO, run_args, run_study_process

pytestmark = pytest.mark.slow


def _predict_champion(images: Path, uri: str, names: list[str]) -> np.ndarray:
    """``lenstune predict`` of the registered champion on an .npy file, as a user runs it
    (no --resize); the (N, C) probabilities it wrote."""
    out = images.with_suffix(".csv")
    predict = subprocess.run(
        [sys.executable, "-m", "tuner.cli", "predict", str(images), "--model",
         "models:/lenstune-model_ii@champion", "--out", str(out), "--tracking-uri", uri],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert predict.returncode == 0, predict.stderr[-3000:]
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    return np.array([[float(r[f"prob_{n}"]) for n in names] for r in rows])


def test_the_preparation_is_the_dataset_writers():
    from tuner.data.preprocess import prepare_images

    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, 64, 64, generator=g)
    prepared = prepare_images(images, 32)
    blocks = images.reshape(4, 1, 32, 2, 32, 2).mean(dim=(3, 5))  # the 2x2 block mean
    lo, hi = blocks.amin(dim=(1, 2, 3), keepdim=True), blocks.amax(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(prepared, (blocks - lo) / (hi - lo), atol=1e-6)
    normalised = prepare_images(images, 64)  # same size: min-max only
    assert torch.equal(normalised, (images - images.amin(dim=(1, 2, 3), keepdim=True))
                       / (images.amax(dim=(1, 2, 3), keepdim=True)
                          - images.amin(dim=(1, 2, 3), keepdim=True)))
    assert torch.equal(prepare_images(normalised, 64), normalised)  # stored data: no bit changes
    raw_counts = 1e4 * images + 37.0  # a user's unnormalised file of the same images
    assert torch.allclose(prepare_images(raw_counts, 32), prepared, atol=1e-5)
    assert prepare_images(images[:, :, :60, :60], 64).shape[-1] == 64  # enlarging: bilinear


def test_a_64px_dataset_tuned_at_32px_promotes_and_predicts_like_promotion(tmp_path):
    from mlflow import MlflowClient

    from tuner.data import ensure_simulated, load_split

    data = ensure_simulated(tmp_path / "model_ii-64px", "model_ii", 30, seed=0)
    runs = tmp_path / "runs"
    proc = run_study_process(run_args(data, runs, "levit", samples=2,
                                      extra=("--max-epochs", "1")), timeout_s=540)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "lenstune-model_ii v1 is champion" in proc.stdout, proc.stdout[-3000:]

    uri = f"sqlite:///{runs / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    version = client.get_model_version_by_alias("lenstune-model_ii", "champion")
    metrics_file = client.download_artifacts(
        version.run_id, "registered_model/evaluation/metrics.json", str(tmp_path / "eval"))
    promoted_auc = json.loads(Path(metrics_file).read_text())["auc_macro"]

    test = load_split(data, "test")
    assert test.images.shape[-1] == 64
    np.save(tmp_path / "test.npy", test.images.numpy())  # the user's raw files, native size
    names = list(test.meta.class_names)
    probs = _predict_champion(tmp_path / "test.npy", uri, names)
    from tuner import metrics

    auc = metrics.roc_auc_ovr(probs, test.labels.numpy(), names)["macro"]
    assert abs(auc - promoted_auc) < 1e-6, (auc, promoted_auc)

    # The model that leaves the study is the model that was tuned: the champion trial's best
    # checkpoint, re-evaluated through the registry's prediction path on the validation split,
    # gives the validation AUC the trial reported; the resolved study config travels with the
    # checkpoint and with the registered model.
    from tuner.models.io import predict_probs
    from tuner.registry.pyfunc import load_registered
    from tuner.training.checkpoint import load_model

    trial = client.get_run(version.run_id)
    folder = client.download_artifacts(trial.info.run_id, "checkpoint", str(tmp_path / "ckpt"))
    network, resolved = load_model(Path(folder))
    val = load_split(data, "val")
    val_probs = predict_probs(network, val.images.numpy(), int(resolved["img_size"]))
    val_auc = metrics.roc_auc_ovr(val_probs, val.labels.numpy(), names)["macro"]
    assert abs(val_auc - trial.data.metrics["best_val_auc_macro"]) < 1e-6
    assert resolved["study_config"]["families"] == ["levit"]
    _, registered = load_registered("models:/lenstune-model_ii@champion", tracking_uri=uri)
    assert registered.study_config["families"] == ["levit"] and registered.data_image_size == 64


def test_a_model_trained_on_a_smaller_simulation_takes_the_native_images_raw(tmp_path):
    """The issue's case: a champion trained on a 32 px dataset simulated from 64 px images,
    given the same systems as raw 64 px images (a DeepLense-size file), predicts exactly what
    it predicts on its own 32 px test split, without --resize."""
    from tuner.data import ensure_simulated, load_split
    from tuner.models.io import predict_probs
    from tuner.registry.pyfunc import load_registered

    small = ensure_simulated(tmp_path / "model_ii-32px", "model_ii", 30, seed=0, img_size=32)
    native = ensure_simulated(tmp_path / "model_ii-64px", "model_ii", 30, seed=0)
    runs = tmp_path / "runs"
    proc = run_study_process(run_args(small, runs, "levit", samples=2,
                                      extra=("--max-epochs", "1")), timeout_s=540)
    assert proc.returncode == 0, proc.stderr[-3000:]
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    model, config = load_registered("models:/lenstune-model_ii@champion", tracking_uri=uri)
    assert (config.img_size, config.data_image_size, config.native_image_size) == (32, 32, 64)
    own = predict_probs(model, load_split(small, "test").images.numpy(), config.img_size)

    raw = load_split(native, "test").images.numpy()  # the same systems at the preset's size
    np.save(tmp_path / "raw64.npy", raw)
    probs = _predict_champion(tmp_path / "raw64.npy", uri, list(config.class_names))
    np.testing.assert_allclose(probs, own, atol=1e-5)
