"""`lenstune predict --uncertainty METHOD` on the registered champion (a real micro model)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tuner.data import load_split
from tuner.cli.predict import main as predict_main

CHAMPION = "models:/lenstune-model_ii@champion"
PROBS = ["prob_no_sub", "prob_cdm", "prob_axion"]


@pytest.fixture(scope="module")
def images_file(toy_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("pred") / "x.npy"
    np.save(path, load_split(toy_data, "test").images.numpy()[::4].copy())  # 30 images, all classes
    return path


def _predict(images_file, tmp_path, uri, *extra) -> pd.DataFrame:
    out = tmp_path / f"{'_'.join(extra) or 'none'}.csv".replace("/", "_")
    assert predict_main([str(images_file), "--model", CHAMPION, "--out", str(out),
                         "--tracking-uri", uri, *extra]) == 0
    return pd.read_csv(out, keep_default_na=False)


def test_temperature_and_conformal_calibrate_on_the_models_dataset(promoted, tracking, images_file,
                                                                  tmp_path):
    uri = tracking[0]
    plain = _predict(images_file, tmp_path, uri)
    scaled = _predict(images_file, tmp_path, uri, "--uncertainty", "temperature")
    # temperature changes confidence, never the predicted class; no samples, so no MI column
    assert list(scaled["predicted_class"]) == list(plain["predicted_class"])
    assert not np.allclose(scaled[PROBS].to_numpy(), plain[PROBS].to_numpy())
    assert "mutual_information" not in scaled and (scaled["entropy"] >= 0).all()
    np.testing.assert_allclose(scaled[PROBS].sum(1), 1.0, atol=1e-6)

    sets = _predict(images_file, tmp_path, uri, "--uncertainty", "conformal", "--alpha", "0.2")
    members = [s.split("|") for s in sets["conformal_set"]]
    assert all(set(m) <= {"no_sub", "cdm", "axion"} for m in members)
    assert list(sets["conformal_set_size"]) == [len(m) for m in members]
    # non-randomised APS sets are never empty and always hold the most probable class
    assert all(p in m for p, m in zip(sets["predicted_class"], members))


def test_laplace_adds_mutual_information(promoted, tracking, images_file, tmp_path):
    frame = _predict(images_file, tmp_path, tracking[0], "--uncertainty", "laplace")
    assert (frame["mutual_information"] >= 0).all() and (frame["mutual_information"] > 0).any()
    assert (frame["entropy"] >= frame["mutual_information"] - 1e-9).all()


def test_methods_that_do_not_apply_are_refused(promoted, tracking, images_file, other_data, tmp_path,
                                               capsys):
    uri = tracking[0]
    base = [str(images_file), "--model", CHAMPION, "--out", str(tmp_path / "o.csv"), "--tracking-uri", uri]
    assert predict_main([*base, "--uncertainty", "ensemble"]) == 2
    assert "needs a registered hyper-ensemble" in capsys.readouterr().err
    assert predict_main([*base, "--uncertainty", "temperature", "--data", str(other_data)]) == 2
    assert "calibrate on the model's own dataset" in capsys.readouterr().err
    assert predict_main([*base, "--uncertainty", "conformal", "--alpha", "1.5"]) == 2
    assert "--alpha must be in (0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_local_model_folder_needs_data_for_fitted_methods(promoted, tracking, images_file, toy_data,
                                                          tmp_path, capsys):
    import mlflow

    from tuner.registry.pyfunc import resolve_model_uri

    folder = mlflow.artifacts.download_artifacts(resolve_model_uri(CHAMPION, tracking[0]),
                                                 dst_path=str(tmp_path / "m"), tracking_uri=tracking[0])
    base = [str(images_file), "--model", folder, "--uncertainty", "temperature"]
    assert predict_main([*base, "--out", str(tmp_path / "a.csv")]) == 2
    assert "pass --data DIR" in capsys.readouterr().err
    assert predict_main([*base, "--out", str(tmp_path / "b.csv"), "--data", str(toy_data)]) == 0
