"""The entry point ends with promotion (and the hyper-ensemble with --ensemble-top-k).

The fast tests replace the study and the registry calls to check the wiring; the slow one runs a
real micro study through ``tuner/run.py`` and reads the registry with MlflowClient.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import tuner.registry.ensembles
import tuner.registry.promotion
import tuner.study.driver
from tuner import run
from tuner.study.config import resolve_study_config
from tuner.registry.promotion import PromotionError


class _Result:
    tracking_uri, parent_run_id, data_root = "sqlite:///x.db", "parent123", Path("/data/toy")
    rows = [{"stop_reason": "completed"}, {"stop_reason": "asha_stopped"}]

    def summary(self) -> str:
        return "leaderboard"


@pytest.fixture
def calls(monkeypatch, tmp_path):
    """Records the registry calls main makes after a (replaced) study."""
    seen: list[tuple[str, dict]] = []
    monkeypatch.setattr(tuner.study.driver, "run_study", lambda config: _Result())

    def promote(experiment, **kw):
        seen.append(("promote", {"experiment": experiment, **kw}))
        raise PromotionError("no trial of study parent123 completed its budget")

    def ensemble(experiment, **kw):
        seen.append(("ensemble", {"experiment": experiment, **kw}))
        raise PromotionError("a hyper-ensemble needs at least 2 completed trials")

    monkeypatch.setattr(tuner.registry.promotion, "promote_champion", promote)
    monkeypatch.setattr(tuner.registry.ensembles, "register_hyper_ensemble", ensemble)
    return seen


def _argv(tmp_path, *extra):
    return ["--family", "vit", "--profile", "micro", "--runs-dir", str(tmp_path), "--experiment", "e",
            *extra]


def test_promotion_follows_the_study_and_its_failure_is_not_the_studys(calls, tmp_path, capsys):
    assert run.main(_argv(tmp_path)) == 0
    assert [name for name, _ in calls] == ["promote"]
    kw = calls[0][1]
    assert kw["experiment"] == "e" and kw["study_run_id"] == "parent123"
    assert kw["data_root"] == Path("/data/toy") and kw["tracking_uri"] == "sqlite:///x.db"
    out = capsys.readouterr().out
    assert "nothing promoted: no trial of study parent123 completed its budget" in out


def test_a_study_whose_every_trial_failed_exits_1_and_promotes_nothing(calls, tmp_path,
                                                                       monkeypatch, capsys):
    monkeypatch.setattr(_Result, "rows", [{"stop_reason": "failed"}] * 3)
    assert run.main(_argv(tmp_path)) == 1
    assert calls == [] and "all 3 trials failed" in capsys.readouterr().err


def test_a_study_with_some_failed_trials_promotes_and_exits_1(calls, tmp_path, monkeypatch,
                                                             capsys):
    monkeypatch.setattr(_Result, "rows", [{"stop_reason": "completed"}, {"stop_reason": "failed"}])
    assert run.main(_argv(tmp_path)) == 1
    assert [name for name, _ in calls] == ["promote"]
    assert "1 of 2 trials failed" in capsys.readouterr().err


def test_no_promote_skips_the_registry(calls, tmp_path, capsys):
    assert run.main(_argv(tmp_path, "--no-promote")) == 0
    assert calls == [] and "promotion skipped (--no-promote)" in capsys.readouterr().out


def test_ensemble_top_k_registers_after_promotion(calls, tmp_path, capsys):
    assert run.main(_argv(tmp_path, "--ensemble-top-k", "3")) == 0
    assert [name for name, _ in calls] == ["promote", "ensemble"]
    assert calls[1][1]["top_k"] == 3 and calls[1][1]["compete"] is True
    assert "nothing registered: a hyper-ensemble needs at least 2" in capsys.readouterr().out
    calls.clear()
    assert run.main(_argv(tmp_path, "--ensemble-top-k", "2", "--no-promote")) == 0
    assert [name for name, _ in calls] == ["ensemble"] and calls[0][1]["compete"] is False


def test_promotion_settings_from_yaml_and_bad_k(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text("promote: false\nensemble_top_k: 4\n")
    config = resolve_study_config({}, path)
    assert (config.promote, config.ensemble_top_k) == (False, 4)
    assert run.main(["--ensemble-top-k", "1", "--runs-dir", str(tmp_path / "r")]) == 2
    assert "ensemble_top_k=1" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_run_py_promotes_and_registers_the_hyper_ensemble(micro_dataset, tmp_path):
    """A 3-trial micro study (one epoch each, so every trial completes its budget) through
    tuner/run.py: version 1 is the best trial (champion), version 2 the hyper-ensemble or, when
    the greedy selection keeps one trial, the reason is printed; the exit code is 0 either way."""
    from mlflow import MlflowClient

    from tests.study.studies import run_args, run_study_process

    runs = tmp_path / "runs"
    args = run_args(micro_dataset, runs, "scratch", samples=3,
                    extra=("--max-epochs", "1", "--ensemble-top-k", "3"))
    proc = run_study_process(args, timeout_s=540)
    assert proc.returncode == 0, proc.stderr[-3000:]
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    versions = {str(v.version): v for v in client.search_model_versions("name = 'lenstune-model_ii'")}
    assert "lenstune-model_ii v1 is champion" in proc.stdout
    assert versions["1"].tags["lenstune.family"] == "scratch"
    assert "ECE" in proc.stdout and "NLL" in proc.stdout
    if "2" in versions:
        assert versions["2"].tags["lenstune.model_kind"] == "hyper_ensemble"
        assert str(client.get_model_version_by_alias("lenstune-model_ii", "ensemble").version) == "2"
    else:
        assert "hyper-ensemble: nothing registered: the greedy selection" in proc.stdout
    study = [r for r in client.search_runs([client.get_experiment_by_name("it").experiment_id])
             if r.data.tags.get("lenstune.kind") == "study"][0]
    assert {"champion_test_auc_macro", "champion_test_ece", "champion_test_nll"} <= set(study.data.metrics)
