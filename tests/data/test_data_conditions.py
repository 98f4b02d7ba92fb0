"""Datasets with observing conditions: recorded in meta.json and the per-image params, a
different dataset for ensure_simulated, the simulate command's flags, and default conditions
changing no byte."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tuner.cli.simulate import main as simulate_main
from tuner.data import DatasetError, ensure_simulated, load_split, read_meta, simulate_dataset
from tuner.data.montage import pick_indices, substructure_residuals
from tuner.lensing.conditions import ObservingConditions

from tests.data.test_data_simulate import PINNED_CPU_CAPABILITY, PINNED_DIGESTS

COUNTS = {"train": 3, "val": 2, "test": 2}
WIDE = ObservingConditions(noise_scale=(0.5, 4.0), psf_fwhm_scale=(0.75, 1.5), source_mag_offset=(-1.0, 1.0),
                           subpixel_shift_px=0.5)


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() != PINNED_CPU_CAPABILITY,
                    reason=f"digests pinned on a {PINNED_CPU_CAPABILITY} CPU")
@pytest.mark.parametrize(("kwargs", "counts", "digest"), PINNED_DIGESTS)
def test_default_conditions_keep_the_pinned_digest(tmp_path, kwargs, counts, digest):
    meta = simulate_dataset(tmp_path / "a", "model_ii", counts, conditions=ObservingConditions(), **kwargs)
    assert meta.digest == digest and meta.conditions is None


def test_default_conditions_write_the_same_files(tmp_path):
    plain = simulate_dataset(tmp_path / "plain", "model_ii", COUNTS, seed=3, img_size=32)
    default = simulate_dataset(tmp_path / "default", "model_ii", COUNTS, seed=3, img_size=32,
                               conditions=ObservingConditions.fixed())
    assert plain == default
    assert (tmp_path / "plain" / "meta.json").read_bytes() == (tmp_path / "default" / "meta.json").read_bytes()
    assert "conditions" not in (tmp_path / "plain" / "meta.json").read_text()


def test_conditions_are_recorded_reproducible_and_change_the_images(tmp_path):
    plain = simulate_dataset(tmp_path / "plain", "model_ii", COUNTS, seed=3, img_size=32)
    wide = simulate_dataset(tmp_path / "wide", "model_ii", COUNTS, seed=3, img_size=32, conditions=WIDE)
    again = simulate_dataset(tmp_path / "again", "model_ii", COUNTS, seed=3, img_size=32, conditions=WIDE.to_dict())
    assert wide.digest == again.digest != plain.digest
    assert ObservingConditions.from_mapping(read_meta(tmp_path / "wide").conditions) == WIDE
    train = load_split(tmp_path / "wide", "train", verify=True)
    for key, (lo, hi) in {"noise_scale": (0.5, 4.0), "source_mag_offset": (-1.0, 1.0), "shift_x_px": (-0.5, 0.5),
                          "psf_fwhm_arcsec": (0.12, 0.24)}.items():
        values = train.params[key]
        assert values.shape == (9,) and (values >= lo - 1e-6).all() and (values <= hi + 1e-6).all(), key
        assert len(set(values.tolist())) == 9, key  # drawn per image
    base = load_split(tmp_path / "plain", "train")
    np.testing.assert_array_equal(train.params["source_x_arcsec"], base.params["source_x_arcsec"])  # same systems
    assert "noise_scale" not in base.params


def test_ensure_simulated_tells_conditions_apart(tmp_path):
    root = ensure_simulated(tmp_path / "d", "model_ii", 5, seed=1, img_size=32, conditions=WIDE)
    digest = read_meta(root).digest
    assert ensure_simulated(root, "model_ii", 5, seed=1, img_size=32, conditions=WIDE) == root
    assert read_meta(root).digest == digest
    with pytest.raises(DatasetError, match=r"conditions: found \{.*\}, wanted None"):
        ensure_simulated(root, "model_ii", 5, seed=1, img_size=32)
    plain = ensure_simulated(tmp_path / "p", "model_ii", 5, seed=1, img_size=32)
    with pytest.raises(DatasetError, match="conditions: found None"):
        ensure_simulated(plain, "model_ii", 5, seed=1, img_size=32, conditions=ObservingConditions.fixed(noise_scale=2))
    assert ensure_simulated(plain, "model_ii", 5, seed=1, img_size=32, conditions=ObservingConditions()) == plain


def test_residuals_of_a_dataset_with_conditions_are_reproduced(tmp_path):
    simulate_dataset(tmp_path / "wide", "model_ii", COUNTS, seed=3, conditions=WIDE)
    split = load_split(tmp_path / "wide", "train")
    labels = split.labels.numpy()
    residuals = substructure_residuals(split, pick_indices(labels, 1, 1) + pick_indices(labels, 2, 1))
    assert all(r.reproduced for r in residuals)


def test_cli_flags_and_recipe(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("noise_scale: [0.5, 2]\nsubpixel_shift_px: 0.25\n")
    out = tmp_path / "ds"
    base = ["--preset", "model_ii", "--n-per-class", "5", "--img-size", "32", "--quiet"]
    assert simulate_main(base + ["--out", str(out), "--conditions", str(recipe), "--psf-scale", "0.75,1.5",
                                 "--mag-offset=-1,1", "--noise-scale", "2"]) == 0
    conditions = ObservingConditions.from_mapping(read_meta(out).conditions)
    assert conditions == ObservingConditions(noise_scale=(2.0, 2.0), psf_fwhm_scale=(0.75, 1.5),
                                             source_mag_offset=(-1.0, 1.0), subpixel_shift_px=0.25)
    capsys.readouterr()
    for bad, message in ((["--noise-scale", "2,1"], "--noise-scale: noise_scale [2.0, 1.0]: lo must be <= hi"),
                         (["--psf-scale", "a,b"], "--psf-scale 'a,b': expected LO,HI or one number"),
                         (["--subpixel-shift", "-1"], "--subpixel-shift: subpixel_shift_px -1.0: must be"),
                         (["--conditions", str(tmp_path / "none.yaml")], "none.yaml: No such file"),
                         (["--subpixel-shift", "40"], "out of preset 'model_ii''s 64 px image")):
        assert simulate_main(base + ["--out", str(tmp_path / "bad")] + bad) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "bad").exists()
