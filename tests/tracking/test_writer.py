
import pytest
from mlflow.tracking import MlflowClient

from tuner.tracking import writer as tracking

DATASET = tracking.DatasetInfo("model_ii-32px", "abc123", "/data/x", "model_ii")


def _study(uri, experiment):
    client = MlflowClient(uri)
    exp = tracking.ensure_experiment(client, experiment)
    parent = tracking.start_study_run(client, exp, "s1", {"seed": 0}, DATASET)
    return client, exp, parent


def test_study_and_trial_runs_follow_conventions(sqlite_uri):
    client, exp, parent = _study(sqlite_uri, "conventions")
    assert tracking.start_study_run(client, exp, "s1", {"seed": 0}, DATASET, resume=True) == parent
    with pytest.raises(tracking.StudyNameTaken, match="--resume"):  # never another study's run
        tracking.start_study_run(client, exp, "s1", {"seed": 0}, DATASET)
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


def test_resume_deletes_only_this_familys_runs_unknown_to_the_restored_study(sqlite_uri):
    client, exp, parent = _study(sqlite_uri, "orphans")
    runs = {}
    for trial_id, family in (("a_00000", "vit"), ("a_00001", "vit"), ("a_00002", "vit"),
                             ("b_00000", "swin")):
        runs[trial_id] = tracking.start_trial_run(
            client, experiment_id=exp, parent_run_id=parent, study_name="s1", trial_id=trial_id,
            family=family, run_name=trial_id, params={}, dataset=DATASET)
    known = {"a_00000", "a_00001"}
    deleted = tracking.delete_orphan_trial_runs(client, exp, parent, "vit", known.__contains__)
    assert deleted == [runs["a_00002"]]
    assert client.get_run(runs["a_00002"]).info.lifecycle_stage == "deleted"
    assert client.get_run(runs["a_00002"]).info.status == "KILLED"
    left = {r.data.tags["trial_id"] for r in tracking.list_trial_runs(client, exp, parent)}
    assert left == {"a_00000", "a_00001", "b_00000"}  # the other family is not this resume's
    assert tracking.delete_orphan_trial_runs(client, exp, parent, "vit", known.__contains__) == []


def test_trials_of_a_result_grid_are_known_by_reported_id_or_folder_name():
    from types import SimpleNamespace as R

    from tuner.study.driver import known_trials

    grid = [R(metrics={"trial_id": "ab12c8f0"}, path="/s/levit/train_trial_ab12c8f0"),
            R(metrics={}, path="bucket/studies/s/levit/train_trial_0c1d2e3f"),
            R(metrics=None, path="/s/levit/train_trial_ab12c_00002/")]
    known = known_trials(grid)
    assert all(known(t) for t in ("ab12c8f0", "0c1d2e3f", "ab12c_00002"))
    assert not any(known(t) for t in ("ab12c8f1", "trial_0c1d2e3f_x", "ab12c"))
    assert known_trials(grid + [R(metrics={}, path="")]) is None  # unknown: delete nothing
