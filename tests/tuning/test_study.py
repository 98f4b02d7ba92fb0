"""Micro studies with real Ray and real MLflow (embedded sqlite and a server process)."""

import pytest
from mlflow.tracking import MlflowClient

from tests.servers import mlflow_server
from tests.tuning.studies import check_trial_runs, run_args, run_study_process, trial_runs
from tuner.search_space import load_search_space

pytestmark = pytest.mark.slow
FAMILIES = ("vit", "scratch")


def test_two_family_micro_study_on_local_ray(micro_dataset, tmp_path):
    runs = tmp_path / "runs"
    proc = run_study_process(run_args(micro_dataset, runs, *FAMILIES, samples=4))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank  family" in proc.stdout and "mlflow ui --backend-store-uri sqlite:///" in proc.stdout
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    studies, trials = trial_runs(uri)
    assert len(studies) == 1 and studies[0].info.status == "FINISHED"
    assert len(trials) == 8 and {r.data.tags["family"] for r in trials} == set(FAMILIES)
    for family in FAMILIES:
        budget = load_search_space(family, "micro").budget
        family_trials = [r for r in trials if r.data.tags["family"] == family]
        check_trial_runs(uri, family_trials, studies[0].info.run_id, budget.max_epochs)
    assert any(r.data.tags["stop_reason"] == "asha_stopped" for r in trials)
    names = {a.path for a in MlflowClient(uri).list_artifacts(studies[0].info.run_id)}
    assert {"leaderboard.csv", "leaderboard.png", "param_importances", "search_space",
            "study_config.json"} <= names
    assert len((runs / "leaderboards").glob("*/leaderboard.csv").__next__().read_text().splitlines()) == 9


def test_micro_study_logs_to_a_real_mlflow_server(micro_dataset, tmp_path):
    backend = f"sqlite:///{tmp_path / 'server.db'}"
    with mlflow_server(backend, artifacts_destination=str(tmp_path / "artifacts")) as server:
        proc = run_study_process(run_args(micro_dataset, tmp_path / "runs", "vit", samples=2,
                                          extra=("--tracking-uri", server.uri, "--max-epochs", "2")))
        assert proc.returncode == 0, proc.stderr[-3000:]
        studies, trials = trial_runs(server.uri)
        assert len(studies) == 1 and len(trials) == 2
        check_trial_runs(server.uri, trials, studies[0].info.run_id,
                         2)
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # nothing embedded
    assert list((tmp_path / "artifacts").rglob("model.safetensors"))
