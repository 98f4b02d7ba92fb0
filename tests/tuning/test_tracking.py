import math

import pytest
from mlflow.tracking import MlflowClient

from tuner import tracking

DATASET = tracking.DatasetInfo("model_ii-32px", "abc123", "/data/x", "model_ii")


def _study(uri, experiment):
    client = MlflowClient(uri)
    exp = tracking.ensure_experiment(client, experiment)
    parent = tracking.start_study_run(client, exp, "s1", {"seed": 0}, DATASET)
    return client, exp, parent


def test_study_and_trial_runs_follow_conventions(sqlite_uri):
    client, exp, parent = _study(sqlite_uri, "conventions")
    assert tracking.start_study_run(client, exp, "s1", {"seed": 0}, DATASET) == parent  # reused
    run = tracking.start_trial_run(client, experiment_id=exp, parent_run_id=parent,
                                   study_name="s1", trial_id="t_00001", family="vit",
                                   run_name="vit-t_00001", params={"train.lr": 0.01}, dataset=DATASET)
    again = tracking.start_trial_run(client, experiment_id=exp, parent_run_id=parent,
                                     study_name="s1", trial_id="t_00001", family="vit",
                                     run_name="vit-t_00001", params={"train.lr": 0.01}, dataset=DATASET)
    assert again == run  # a resumed trial reuses its run
    tracking.log_epoch(client, run, {"val_auc_macro": 0.7, "best_val_auc_macro": 0.7, "epoch": 1}, 1)
    tracking.end_trial_run(client, run, "asha_stopped", "stopped after 1 of 3 epochs")
    got = client.get_run(run)
    assert got.data.tags["mlflow.parentRunId"] == parent
    assert got.data.tags["lenstune.kind"] == "trial" and got.data.tags["stop_reason"] == "asha_stopped"
    assert got.info.status == "KILLED"
    assert got.data.params["train.lr"] == "0.01"
    assert got.inputs.dataset_inputs[0].dataset.digest == "abc123"
    assert client.get_run(parent).data.tags["lenstune.kind"] == "study"
    with pytest.raises(ValueError, match="stop_reason"):
        tracking.end_trial_run(client, run, "bored")


def test_leaderboard_orders_by_best_auc_and_writes_files(sqlite_uri, tmp_path):
    client, exp, parent = _study(sqlite_uri, "board")
    for i, auc in enumerate([0.6, 0.9, 0.75]):
        run = tracking.start_trial_run(client, experiment_id=exp, parent_run_id=parent, study_name="s1",
                                       trial_id=f"t{i}", family="vit" if i else "swin",
                                       run_name=f"r{i}", params={}, dataset=DATASET)
        tracking.log_epoch(client, run, {"best_val_auc_macro": auc, "epoch": 2}, 2)
        tracking.end_trial_run(client, run, "completed")
    rows = tracking.leaderboard_rows(tracking.list_trial_runs(client, exp, parent))
    assert [r["trial_id"] for r in rows] == ["t1", "t2", "t0"]
    csv_path, png_path = tracking.write_leaderboard(rows, tmp_path / "board")
    assert csv_path.read_text().count("\n") == 4 and png_path.stat().st_size > 1000
    assert "t1" in tracking.format_leaderboard(rows).splitlines()[2]


def test_unreachable_or_unsupported_tracking_uri_fails_fast():
    with pytest.raises(tracking.TrackingError, match="unreachable"):
        tracking.check_tracking_uri("http://127.0.0.1:9", timeout_s=2)
    with pytest.raises(tracking.TrackingError, match="not allowed"):
        tracking.check_tracking_uri("/some/folder")
    tracking.check_tracking_uri("sqlite:////tmp/x.db")
