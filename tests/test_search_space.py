"""Search-space files: every one validates and samples into a buildable model; bad files fail clearly."""

from pathlib import Path

import pytest
import yaml

from tuner.models import build_model, list_families
from tuner.study.search_space import SearchSpaceError, TrainHParams, default_path, load_search_space


def test_every_family_has_a_yaml_and_no_stray_files():
    files = {p.stem for p in default_path("vit").parent.glob("*.yaml")}
    assert files == set(list_families())


@pytest.mark.parametrize("family", list_families())
def test_gpu_and_micro_profiles_validate_and_sample(family):
    for profile in ("gpu", "micro"):
        space = load_search_space(family, profile, check_build=False)
        assert space.family == family and space.budget.grace_period <= space.budget.max_epochs
        cfg = space.sample(seed=3)
        assert cfg == space.sample(seed=3)  # reproducible
        TrainHParams(**cfg["train"])
        assert set(space.param_space()) == {"model", "train"}
    # the micro sample builds; the gpu profile's names are checked above without building
    micro = load_search_space(family, "micro", check_build=False)
    build_model(family, img_size=micro.img_size, **micro.sample(seed=4)["model"])


def test_param_space_holds_tune_distributions():
    from ray.tune.search.sample import Domain

    space = load_search_space("scratch", "micro", check_build=False).param_space()
    assert isinstance(space["train"]["lr"], Domain)
    assert space["model"]["embed_dim"] == 32  # fixed values stay plain


@pytest.mark.slow
@pytest.mark.parametrize("family", list_families())
def test_micro_choices_all_build(family):
    load_search_space(family, "micro", check_build=True)


def _write(tmp_path: Path, family: str, edit) -> Path:
    doc = yaml.safe_load(default_path(family).read_text())
    edit(doc)
    path = tmp_path / f"{family}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _load_bad(tmp_path, family, edit, profile="micro"):
    path = _write(tmp_path, family, edit)
    with pytest.raises(SearchSpaceError) as info:
        load_search_space(family, profile, path)
    assert str(path) in str(info.value)
    return str(info.value)


def test_unknown_key(tmp_path):
    msg = _load_bad(tmp_path, "scratch", lambda d: d["profiles"]["micro"]["train"].update(epochz=3))
    assert "epochz" in msg and "unknown key" in msg


def test_unknown_model_hparam_lists_allowed(tmp_path):
    msg = _load_bad(tmp_path, "scratch",
                    lambda d: d["profiles"]["micro"]["model"]["fixed"].update(widht=3))
    assert "model.widht" in msg and "allowed:" in msg and "embed_dim" in msg


def test_low_not_below_high(tmp_path):
    def edit(d):
        d["profiles"]["micro"]["train"]["search"]["label_smoothing"] = {"type": "uniform", "low": 0.2, "high": 0.1}
    msg = _load_bad(tmp_path, "scratch", edit)
    assert "label_smoothing" in msg and "must be < high" in msg


def test_negative_lr(tmp_path):
    def edit(d):
        d["profiles"]["micro"]["train"]["search"]["lr"] = {"type": "uniform", "low": -0.1, "high": 0.1}
    msg = _load_bad(tmp_path, "scratch", edit)
    assert "train.search.lr" in msg and "greater than 0" in msg


def test_yaml_syntax_error(tmp_path):
    path = tmp_path / "scratch.yaml"
    path.write_text("family: scratch\nprofiles: {micro: [unclosed\n")
    with pytest.raises(SearchSpaceError, match="YAML syntax error") as info:
        load_search_space("scratch", "micro", path)
    assert str(path) in str(info.value)


def test_choice_the_family_rejects(tmp_path):
    def edit(d):  # 5 heads do not divide a 32-wide embedding
        d["profiles"]["micro"]["model"]["search"]["num_heads"] = {"type": "choice", "values": [2, 5]}
        del d["profiles"]["micro"]["model"]["fixed"]["num_heads"]
    msg = _load_bad(tmp_path, "scratch", edit)
    assert "model.search.num_heads" in msg and "rejects value 5" in msg and "divisible" in msg


def test_unknown_profile_and_family_mismatch(tmp_path):
    with pytest.raises(SearchSpaceError, match="allowed: gpu, micro"):
        load_search_space("scratch", "tpu")
    msg = _load_bad(tmp_path, "scratch", lambda d: d.update(family="vit"))
    assert "family" in msg and "'vit'" in msg
