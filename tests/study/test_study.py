"""Micro studies with real Ray and real MLflow (embedded sqlite and a server process)."""

import pytest
from mlflow.tracking import MlflowClient

from tests.servers import mlflow_server
from tests.study.studies import check_trial_runs, run_args, run_study_process, trial_runs
from tuner.study.search_space import load_search_space

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


def test_a_server_named_by_the_environment_keeps_artifacts_and_checkpoints_follow_rungs(
        micro_dataset, tmp_path):
    """MLFLOW_TRACKING_URI names the server (as the cluster configs do, no flag): the study's
    experiment, artifacts and registered model live on the server, nothing under the runs
    folder. Trials save Tune checkpoints at ASHA's rungs and the last epoch only."""
    import json

    backend = f"sqlite:///{tmp_path / 'server.db'}"
    runs = tmp_path / "runs"
    with mlflow_server(backend, artifacts_destination=str(tmp_path / "artifacts")) as server:
        proc = run_study_process(run_args(micro_dataset, runs, "vit", samples=2,
                                          extra=("--max-epochs", "4", "--study-name", "env")),
                                 MLFLOW_TRACKING_URI=server.uri)
        assert proc.returncode == 0, proc.stderr[-3000:]
        studies, trials = trial_runs(server.uri)
        assert len(studies) == 1 and len(trials) == 2
        check_trial_runs(server.uri, trials, studies[0].info.run_id, 4)
        client = MlflowClient(server.uri)
        assert client.get_experiment_by_name("it").artifact_location.startswith("mlflow-artifacts:")
        versions = client.search_model_versions("name = 'lenstune-model_ii'")
        assert versions and all(v.source.startswith("mlflow-artifacts:") for v in versions), \
            [v.source for v in versions]
    assert not (runs / "mlflow.db").exists() and not (runs / "mlartifacts").exists()
    assert list((tmp_path / "artifacts").rglob("model.safetensors"))
    # Budget 4 epochs, grace 1, rf 2: rungs at epochs 1 and 2, then the end. Tune keeps two.
    full = [t for t in trials if t.data.tags["stop_reason"] == "completed"]
    for trial in full:
        folder = runs / "studies" / "env" / "vit" / f"train_trial_{trial.data.tags['trial_id']}"
        kept = sorted(p.name for p in folder.glob("checkpoint_*"))
        assert kept == ["checkpoint_000001", "checkpoint_000002"], kept
        epochs = [json.loads((folder / k / "state.json").read_text())["epoch"] for k in kept]
        assert epochs == [2, 4], epochs
