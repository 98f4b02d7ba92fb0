"""Loading the champion by alias, `lenstune predict` and its refusals of bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from tuner.data import load_split
from tuner.cli.predict import main as predict_main
from tuner.registry.pyfunc import InputError, as_image_batch, load_registered

CHAMPION = "models:/lenstune-model_ii@champion"


@pytest.fixture(scope="module")
def test_images(toy_data) -> np.ndarray:
    return load_split(toy_data, "test").images[:6].numpy().copy()


def test_champion_loads_by_alias_as_module_and_pyfunc(promoted, tracking, test_images):
    import mlflow

    uri, _, _ = tracking
    model, config = load_registered(CHAMPION, tracking_uri=uri)
    assert isinstance(model, torch.nn.Module) and not model.training
    assert config.family == "scratch" and config.class_names == ("no_sub", "cdm", "axion")
    with torch.no_grad():
        direct = torch.softmax(model(torch.from_numpy(test_images)), 1).numpy()

    from tuner.registry.pyfunc import resolve_model_uri

    pyfunc = mlflow.pyfunc.load_model(resolve_model_uri(CHAMPION, uri))
    frame = pyfunc.predict(test_images)
    probs = frame[["prob_no_sub", "prob_cdm", "prob_axion"]].to_numpy()
    np.testing.assert_allclose(probs, direct, atol=1e-6)
    assert list(frame["predicted_class"]) == [config.class_names[i] for i in direct.argmax(1)]
    # Height and width are free: the model prepares raw images of its training size itself;
    # the MLmodel file says which sizes, and a caller may ask for others to be prepared too.
    assert pyfunc.metadata.get_input_schema().inputs[0].shape == (-1, 1, -1, -1)
    said = pyfunc.metadata.metadata["lenstune"]
    assert said["accepted_image_sizes"] == [32] and said["input_size"] == 32
    assert said["preparation"] == config.preprocessing and said["class_names"] == list(config.class_names)
    big = np.repeat(np.repeat(test_images, 2, axis=2), 2, axis=3)  # 64 px
    with pytest.raises(Exception, match="the model takes 32x32 images, got 64x64"):
        pyfunc.predict(big)
    with pytest.warns(UserWarning, match="resizing 64x64 images to 32x32"):
        resized = pyfunc.predict(big, params={"resize": True})
    assert resized.shape == frame.shape
    # the champion is version 2: its test AUC tag is what promotion measured
    assert promoted["results"][1].version == "2"


def test_predict_cli_npy_shapes(promoted, tracking, test_images, tmp_path, capsys):
    uri, _, _ = tracking
    outs = {}
    for name, array in {"n1hw": test_images, "nhw": test_images[:, 0], "hw": test_images[0, 0]}.items():
        path = tmp_path / f"{name}.npy"
        np.save(path, array)
        out = tmp_path / f"{name}.csv"
        assert predict_main([str(path), "--model", CHAMPION, "--out", str(out),
                             "--tracking-uri", uri]) == 0
        outs[name] = pd.read_csv(out)
    frame = outs["n1hw"]
    probs = frame[["prob_no_sub", "prob_cdm", "prob_axion"]].to_numpy()
    assert frame.shape[0] == 6
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    pd.testing.assert_frame_equal(frame, outs["nhw"])
    pd.testing.assert_frame_equal(frame.iloc[:1], outs["hw"])


def test_predict_cli_deeplense_folder(promoted, tracking, test_images, tmp_path):
    uri, _, _ = tracking
    folder = tmp_path / "deeplense"
    for i, cls in enumerate(["no", "sphere", "vort"]):
        (folder / cls).mkdir(parents=True)
        np.save(folder / cls / f"img{i}.npy", test_images[i, 0])
    axion = np.empty(2, dtype=object)
    axion[0], axion[1] = test_images[3, 0], 1e-23
    np.save(folder / "vort" / "img3.npy", axion, allow_pickle=True)
    out = tmp_path / "folder.csv"
    assert predict_main([str(folder), "--model", CHAMPION, "--out", str(out),
                         "--tracking-uri", uri]) == 0
    frame = pd.read_csv(out)
    assert list(frame["file"]) == ["no/img0.npy", "sphere/img1.npy", "vort/img2.npy", "vort/img3.npy"]
    assert list(frame["true_class"]) == ["no_sub", "cdm", "axion", "axion"]


@pytest.mark.parametrize("case, message", [
    ("wrong_shape", "must have shape"),
    ("nan", "NaN or infinite"),
    ("empty_file", "is empty"),
    ("empty_array", "no images"),
    ("wrong_size", "takes 32x32 images, got 20x20"),
    ("not_npy", "not a readable numeric .npy"),
])
def test_predict_cli_refuses_bad_input(promoted, tracking, test_images, tmp_path, capsys, case, message):
    uri, _, _ = tracking
    path = tmp_path / f"{case}.npy"
    if case == "wrong_shape":
        np.save(path, np.zeros((2, 2, 32, 32), np.float32))
    elif case == "nan":
        bad = test_images.copy()
        bad[2, 0, 5, 5] = np.nan
        np.save(path, bad)
    elif case == "empty_file":
        path.write_bytes(b"")
    elif case == "empty_array":
        np.save(path, np.zeros((0, 32, 32), np.float32))
    elif case == "wrong_size":
        np.save(path, np.zeros((2, 20, 20), np.float32))
    else:
        path.write_text("not an array")
    out = tmp_path / "out.csv"
    code = predict_main([str(path), "--model", CHAMPION, "--out", str(out), "--tracking-uri", uri])
    assert code != 0
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_resize_is_opt_in_and_warns(promoted, tracking, test_images):
    _, config = load_registered(CHAMPION, tracking_uri=tracking[0])
    big = np.repeat(np.repeat(test_images, 2, axis=2), 2, axis=3)  # 64 px
    with pytest.raises(InputError, match="--resize"):
        as_image_batch(big, config)
    with pytest.warns(UserWarning, match="resizing 64x64 images to 32x32"):
        assert as_image_batch(big, config, resize=True).shape == (6, 1, 64, 64)


def test_unknown_model_alias_is_a_clear_error(promoted, tracking, test_images, tmp_path, capsys):
    path = tmp_path / "x.npy"
    np.save(path, test_images)
    code = predict_main([str(path), "--model", "models:/lenstune-model_ii@nope",
                         "--out", str(tmp_path / "o.csv"), "--tracking-uri", tracking[0]])
    assert code == 2
    assert "cannot load model models:/lenstune-model_ii@nope" in capsys.readouterr().err


def test_local_model_folder_and_mc_dropout(micro_hparams, test_images, tmp_path):
    from safetensors.torch import save_file

    from tuner.models import build_model
    from tuner.models.io import ModelConfig
    from tuner.registry.pyfunc import save_registry_model

    config = ModelConfig(family="scratch", img_size=32, model={**micro_hparams, "drop_rate": 0.3})
    net = build_model("scratch", img_size=32, **config.model)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    model_dir = save_registry_model(tmp_path / "model", config, tmp_path / "w.safetensors", test_images[:2])
    np.save(tmp_path / "x.npy", test_images)
    out = tmp_path / "mc.csv"
    assert predict_main([str(tmp_path / "x.npy"), "--model", str(model_dir), "--out", str(out),
                         "--uncertainty", "mc_dropout"]) == 0
    frame = pd.read_csv(out)
    assert {"entropy", "mutual_information"} <= set(frame.columns)
    assert (frame["mutual_information"] >= 0).all() and (frame["entropy"] > 0).all()
    np.testing.assert_allclose(frame.filter(like="prob_").sum(1), 1.0, atol=1e-6)


def test_mc_dropout_without_dropout_is_refused(promoted, tracking, test_images, tmp_path, capsys):
    np.save(tmp_path / "x.npy", test_images)
    code = predict_main([str(tmp_path / "x.npy"), "--model", CHAMPION, "--out", str(tmp_path / "o.csv"),
                         "--tracking-uri", tracking[0], "--uncertainty", "mc_dropout"])
    assert code == 2 and "MC dropout needs at least one dropout layer" in capsys.readouterr().err
