"""The searchers' Optuna studies in the tracking stack's PostgreSQL: the database that
``docker/postgres-init-optuna.sh`` makes, named to the study by ``LENSTUNE_OPTUNA_STORAGE``
(what ``cluster/kuberay/raycluster.yaml`` sets from its Secret)."""

from __future__ import annotations

import pytest

from tests import servers
from tests.study.studies import REPO, run_args, run_study_process, trial_runs


@pytest.mark.slow
def test_a_study_keeps_its_optuna_study_in_the_stacks_postgres_database(micro_dataset, tmp_path):
    if servers.postgres_bin_dir() is None:
        pytest.skip("PostgreSQL server binaries missing; run .ci/system-deps")
    import optuna

    with servers.postgres_server() as pg:
        url = servers.create_optuna_database(pg, REPO)
        runs = tmp_path / "runs"
        proc = run_study_process(run_args(micro_dataset, runs, "scratch", samples=3, extra=(
            "--study-name", "pg", "--no-promote")), LENSTUNE_OPTUNA_STORAGE=url)
        assert proc.returncode == 0, proc.stderr[-3000:]
        study = optuna.load_study(study_name="pg/scratch", storage=url)
        assert len(study.trials) == 3
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
        assert not (runs / "optuna.db").exists()  # nothing on the driver's disk
        studies, trials = trial_runs(f"sqlite:///{runs / 'mlflow.db'}")
        assert studies[0].data.params["optuna_storage_resolved"] == url
        assert {t.user_attrs["ray_trial_id"] for t in study.trials} == {
            r.data.tags["trial_id"] for r in trials}


def test_the_optuna_storage_is_the_flag_else_the_environment_else_the_runs_folder(
        monkeypatch, tmp_path):
    from tuner.study.config import StudyConfig

    monkeypatch.delenv("LENSTUNE_OPTUNA_STORAGE", raising=False)
    assert StudyConfig(runs_dir=tmp_path).resolved_optuna_storage() == (
        f"sqlite:///{tmp_path / 'optuna.db'}")
    monkeypatch.setenv("LENSTUNE_OPTUNA_STORAGE", "postgresql://optuna@db/optuna")
    assert StudyConfig(runs_dir=tmp_path).resolved_optuna_storage() == "postgresql://optuna@db/optuna"
    assert StudyConfig(runs_dir=tmp_path, optuna_storage="sqlite:///x.db").resolved_optuna_storage() == (
        "sqlite:///x.db")
