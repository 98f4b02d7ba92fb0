import pytest

from tuner.study.config import ConfigError, StudyConfig, flatten, parse_family_list, resolve_study_config


def test_defaults_then_profile_then_file_then_flags(tmp_path):
    assert resolve_study_config({}).profile == "gpu"
    assert resolve_study_config({}).asha_rule == "rank"
    assert resolve_study_config({"asha_rule": "percentile"}).asha_rule == "percentile"
    assert resolve_study_config({}).tpe_told == "first-rung"
    assert resolve_study_config({"tpe_told": "last"}).tpe_told == "last"
    micro = resolve_study_config({"profile": "micro"})
    assert micro.img_size == 32 and micro.samples == 4
    user = tmp_path / "study.yaml"
    user.write_text("samples: 7\nseed: 3\n")
    cfg = resolve_study_config({"profile": "micro", "seed": 5, "samples": None}, user)
    assert cfg.samples == 7 and cfg.seed == 5 and cfg.img_size == 32


def test_bad_values_are_named():
    with pytest.raises(ConfigError, match="samples"):
        resolve_study_config({"samples": 0})
    with pytest.raises(ConfigError, match="profile"):
        resolve_study_config({"profile": "tpu"})
    with pytest.raises(ConfigError, match="asha_rule.*'rank' or 'percentile'"):
        resolve_study_config({"asha_rule": "median"})
    with pytest.raises(ConfigError, match="tpe_told.*'first-rung' or 'last'"):
        resolve_study_config({"tpe_told": "best"})
    with pytest.raises(ConfigError, match="bogus"):
        resolve_study_config({"bogus": 1})
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_study_config({}, config_file=__import__("pathlib").Path("/nonexistent.yaml"))


def test_family_list_parsing():
    known = ["vit", "swin", "resnet18"]
    assert parse_family_list("all", known) == known
    assert parse_family_list("swin, vit", known) == ["swin", "vit"]
    with pytest.raises(ConfigError, match=r"'nope'.*allowed: all, vit, swin"):
        parse_family_list("vit,nope", known)


def test_tracking_uri_from_environment_when_not_configured(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5001")
    assert StudyConfig(runs_dir=tmp_path).resolved_tracking_uri() == "http://127.0.0.1:5001"
    assert StudyConfig(tracking_uri="sqlite:///x.db").resolved_tracking_uri() == "sqlite:///x.db"


def test_embedded_tracking_and_storage_are_absolute(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = StudyConfig(runs_dir=tmp_path / "runs")
    assert cfg.resolved_tracking_uri() == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert cfg.resolved_storage() == str(tmp_path / "runs" / "studies")
    assert StudyConfig(storage="s3://bucket/x").resolved_storage() == "s3://bucket/x"
    assert StudyConfig(tracking_uri="http://127.0.0.1:5000").resolved_tracking_uri().startswith("http")


def test_flatten_names_params_like_mlflow():
    assert flatten({"model": {"depth": 4}, "train": {"lr": 1e-3}}) == {"model.depth": 4, "train.lr": 1e-3}


def test_storage_from_the_environment_unless_configured(tmp_path, monkeypatch):
    monkeypatch.setenv("LENSTUNE_STORAGE", "s3://lenstune-studies/studies")
    assert StudyConfig(runs_dir=tmp_path).resolved_storage() == "s3://lenstune-studies/studies"
    assert StudyConfig(storage=str(tmp_path / "here")).resolved_storage() == str(tmp_path / "here")
    monkeypatch.delenv("LENSTUNE_STORAGE")
    assert StudyConfig(runs_dir=tmp_path).resolved_storage() == str(tmp_path / "studies")


def test_any_tracking_server_keeps_the_artifacts(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    embedded = StudyConfig(runs_dir=tmp_path, experiment="e")
    assert not embedded.tracking_server()
    assert embedded.local_artifact_root() == tmp_path / "mlartifacts" / "e"
    assert StudyConfig(tracking_uri="http://127.0.0.1:5000").local_artifact_root() is None
    # Named by the environment only, as on a cluster: still the server's artifacts.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert StudyConfig(runs_dir=tmp_path).tracking_server()
    assert StudyConfig(runs_dir=tmp_path).local_artifact_root() is None


def test_resources_default_to_auto_and_take_numbers(tmp_path):
    config = resolve_study_config({"runs_dir": tmp_path})
    assert (config.gpus_per_trial, config.max_concurrent) == ("auto", "auto")
    config = resolve_study_config({"gpus_per_trial": 0.5, "max_concurrent": 3})
    assert (config.gpus_per_trial, config.max_concurrent) == (0.5, 3)
    for bad in ({"gpus_per_trial": -1}, {"gpus_per_trial": 1.5}, {"max_concurrent": 0},
                {"gpus_per_trial": "many"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            resolve_study_config(bad)
