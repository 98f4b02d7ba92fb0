"""DeepLense import: layouts, safe loading, errors naming the file, nothing half-written."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from tuner.data import DatasetError, import_deeplense, load_split, read_meta
from tuner.data.deeplense import read_deeplense_file
from tuner.cli.import_deeplense import main as import_main


def test_import_with_val_split(deeplense_dir, tmp_path):
    meta = import_deeplense(deeplense_dir, tmp_path / "out")
    assert meta.source == "deeplense" and meta.class_names == ("no_sub", "cdm", "axion")
    assert meta.image_size == 8
    # val/ exists and is used as is; test is carved from train (10% -> at least 1 per class)
    assert meta.counts["val"] == {"no_sub": 4, "cdm": 4, "axion": 4}
    assert meta.counts["test"] == {"no_sub": 1, "cdm": 1, "axion": 1}
    assert meta.counts["train"] == {"no_sub": 3, "cdm": 3, "axion": 3}
    val = load_split(tmp_path / "out", "val", verify=True)
    assert val.images.shape == (12, 1, 8, 8)
    files = val.params["source_file"].tolist()
    assert files[0] == os.path.join("val", "no", "no_sim_0.npy")
    expected = np.load(deeplense_dir / "val" / "no" / "no_sim_0.npy").astype(np.float32)
    np.testing.assert_array_equal(val.images[0, 0].numpy(), expected)


def test_axion_mass_becomes_parameter(deeplense_dir, tmp_path):
    import_deeplense(deeplense_dir, tmp_path / "out")
    val = load_split(tmp_path / "out", "val")
    axion = val.labels.numpy() == 2
    masses = val.params["m_axion_ev"]
    assert np.isnan(masses[~axion]).all()
    assert ((masses[axion] >= 1e-24) & (masses[axion] <= 1e-22)).all()
    obj = np.load(deeplense_dir / "val" / "vort" / "vort_sim_0.npy", allow_pickle=True)
    index = val.params["source_file"].tolist().index(os.path.join("val", "vort", "vort_sim_0.npy"))
    assert masses[index] == obj[1]
    np.testing.assert_array_equal(val.images[index, 0].numpy(), obj[0].astype(np.float32))


def test_carving_is_deterministic_and_disjoint(tmp_path, make_deeplense):
    src = make_deeplense(tmp_path / "src", splits=("train",), names=("no_sub", "cdm", "axion"), n=10,
                          leading_axis=True)
    a = import_deeplense(src, tmp_path / "a", val_fraction=0.2, test_fraction=0.2, seed=7)
    b = import_deeplense(src, tmp_path / "b", val_fraction=0.2, test_fraction=0.2, seed=7)
    c = import_deeplense(src, tmp_path / "c", val_fraction=0.2, test_fraction=0.2, seed=8)
    assert a.digest == b.digest != c.digest
    assert a.counts["train"]["cdm"] == 6 and a.counts["val"]["cdm"] == 2 and a.counts["test"]["cdm"] == 2
    names = [set(load_split(tmp_path / "a", s).params["source_file"].tolist()) for s in ("train", "val", "test")]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    assert len(set.union(*names)) == 30


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.npy"
    obj = np.empty(2, dtype=object)
    obj[0], obj[1] = Exploit(), 1e-23
    np.save(path, obj, allow_pickle=True)
    with pytest.raises(DatasetError, match=r"evil.npy.*refusing to load posix.system"):
        read_deeplense_file(path)


def test_legacy_numpy_module_names_load(tmp_path):
    obj = np.empty(2, dtype=object)
    obj[0], obj[1] = np.ones((4, 4)), np.float64(2e-23)
    raw = pickle.dumps(obj, protocol=3).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path = tmp_path / "old.npy"
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": (2,)})
        fh.write(raw)
    image, mass = read_deeplense_file(path)
    assert image.shape == (4, 4) and image.dtype == np.float32 and mass == 2e-23


def _break(tmp_path, how, make_deeplense):
    src = make_deeplense(tmp_path / "src")
    if how == "corrupt":
        bad = src / "train" / "sphere" / "sphere_sim_2.npy"
        bad.write_bytes(b"\x93NUMPY garbage")
    elif how == "shape":
        bad = src / "train" / "vort" / "vort_sim_3.npy"
        np.save(bad, np.zeros((6, 6)))
    elif how == "nonsquare":
        bad = src / "train" / "no" / "no_sim_0.npy"
        np.save(bad, np.zeros((8, 6)))
    elif how == "class":
        bad = src / "train" / "substructure"
        bad.mkdir()
    elif how == "split":
        bad = src / "holdout"
        bad.mkdir()
    elif how == "duplicate":
        bad = src / "train" / "cdm"
        bad.mkdir()
        np.save(bad / "x.npy", np.zeros((8, 8)))
    elif how == "truncated":
        bad = src / "train" / "no" / "no_sim_2.npy"
        bad.write_bytes(bad.read_bytes()[:-40])
    elif how == "nan":
        bad = src / "train" / "no" / "no_sim_1.npy"
        np.save(bad, np.full((8, 8), np.nan))
    return src, bad


@pytest.mark.parametrize(
    "how, message",
    [
        ("corrupt", "corrupt or unsupported file"),
        ("shape", r"image shape \(6, 6\) differs .* \(8, 8\)"),
        ("nonsquare", r"allowed: \(H, W\) or \(1, H, W\) with H == W"),
        ("class", "unknown class folder .*allowed: no, no_sub, sphere, cdm, vort, axion"),
        ("split", "unknown split folder .*allowed: train, val, test"),
        ("duplicate", "both hold class cdm"),
        ("nan", "NaN or infinite"),
        ("truncated", "corrupt or unsafe file"),
    ],
)
def test_bad_source_names_file_and_writes_nothing(tmp_path, how, message, capsys, make_deeplense):
    src, bad = _break(tmp_path, how, make_deeplense)
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match=message) as info:
        import_deeplense(src, out)
    assert bad.name in str(info.value)
    assert import_main([str(src), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert bad.name in err and "lenstune import-deeplense:" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing half-written


def test_missing_class_and_train_folders(tmp_path, make_deeplense):
    src = make_deeplense(tmp_path / "src", names=("no", "sphere"))
    with pytest.raises(DatasetError, match=r"lacks class folders for \['axion'\]"):
        import_deeplense(src, tmp_path / "out")
    src2 = make_deeplense(tmp_path / "src2", splits=("val",))
    with pytest.raises(DatasetError, match="has no train/ folder"):
        import_deeplense(src2, tmp_path / "out")


def test_cli_unwritable_out_is_a_clear_error(deeplense_dir, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert import_main([str(deeplense_dir), "--out", str(blocker / "ds"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "nothing was written to" in err and str(blocker) in err
    assert blocker.read_text() == "not a folder"


def test_cli_refuses_overwrite_then_forces(deeplense_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert import_main([str(deeplense_dir), "--out", str(out), "--quiet"]) == 0
    digest = read_meta(out).digest
    assert import_main([str(deeplense_dir), "--out", str(out), "--quiet", "--seed", "3"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert read_meta(out).digest == digest
    assert import_main([str(deeplense_dir), "--out", str(out), "--quiet", "--seed", "3", "--force"]) == 0
    assert read_meta(out).seed == 3
    assert import_main([str(deeplense_dir), "--out", str(tmp_path / "o2"), "--val-fraction", "1.5"]) == 2
    assert "val_fraction must be in (0, 1)" in capsys.readouterr().err


def test_lenstune_command_dispatches_here(deeplense_dir, tmp_path):
    from tuner.cli import main as lenstune

    assert lenstune(["import-deeplense", str(deeplense_dir), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert read_meta(tmp_path / "o").counts["val"]["axion"] == 4
