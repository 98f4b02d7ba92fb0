"""`lenstune show`: montage PNG, residuals re-simulated from the stored block seeds."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest

import tuner.data.montage as montage_mod
from tuner.data import DatasetError, import_deeplense, load_split, simulate_dataset, split_counts
from tuner.data.montage import render_montage, substructure_residuals
from tuner.cli.show import main as show_main


@pytest.fixture
def simulated(tmp_path, fake_backend):
    root = tmp_path / "ds"
    simulate_dataset(root, "fake16", split_counts(12), block_size=4, backend=fake_backend)
    return root


def test_residuals_reproduce_stored_images(simulated, fake_backend):
    data = load_split(simulated, "train")
    labels = data.labels.numpy()
    picks = [int(np.flatnonzero(labels == k)[-1]) for k in range(3)]  # later blocks too
    residuals = substructure_residuals(data, picks, backend=fake_backend)
    assert [r.index for r in residuals] == picks
    assert all(r.reproduced for r in residuals)
    assert np.abs(residuals[0].residual).max() == 0  # no_sub: nothing to subtract
    assert residuals[1].residual[2, 2] > 0.3  # the fake's cdm marker
    assert np.abs(residuals[2].residual[8, 2:-2]).min() > 0.1  # the fake's vortex line


def test_changed_simulator_is_detected(simulated, fake_backend, monkeypatch):
    real = fake_backend.simulate_batch

    def shifted(preset, labels, **kwargs):
        images, params = real(preset, labels, **kwargs)
        return images.roll(1, dims=-1), params

    monkeypatch.setattr(fake_backend, "simulate_batch", shifted)
    data = load_split(simulated, "train")
    assert not substructure_residuals(data, [0], backend=fake_backend)[0].reproduced


def test_montage_png(simulated, fake_backend, tmp_path):
    out = tmp_path / "m.png"
    residuals = render_montage(simulated, out, n_per_class=3, n_residuals=1, backend=fake_backend)
    assert [r.label for r in residuals] == [1, 2]
    image = mpimg.imread(out)
    assert image.ndim == 3 and image.shape[0] > image.shape[1] > 300  # 3 class rows + 2 residual rows
    assert image[..., :3].std() > 0.05  # not blank


def test_montage_of_imported_data_has_no_residuals(deeplense_dir, tmp_path):
    import_deeplense(deeplense_dir, tmp_path / "imp")
    assert render_montage(tmp_path / "imp", tmp_path / "m.png", n_per_class=2) == []
    assert (tmp_path / "m.png").stat().st_size > 1000
    with pytest.raises(DatasetError, match="residuals need a simulated dataset"):
        substructure_residuals(load_split(tmp_path / "imp", "train"), [0])


def test_cli(simulated, fake_backend, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(montage_mod, "default_backend", lambda: fake_backend)
    assert show_main([str(simulated), "--out", str(tmp_path / "a.png"), "--n-per-class", "2"]) == 0
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert show_main([str(simulated), "--out", str(tmp_path / "a.jpg")]) == 2
    assert "must end in .png" in capsys.readouterr().err
    assert show_main([str(tmp_path / "missing"), "--out", str(tmp_path / "b.png")]) == 2
    assert "no dataset at" in capsys.readouterr().err
    assert not (tmp_path / "b.png").exists()
    assert show_main([str(simulated), "--out", str(tmp_path / "c.png"), "--n-per-class", "0"]) == 2
    capsys.readouterr()
    assert show_main([str(simulated), "--out", str(tmp_path / "no" / "d.png"), "--n-residuals", "0"]) == 2
    assert str(tmp_path / "no" / "d.png") in capsys.readouterr().err
