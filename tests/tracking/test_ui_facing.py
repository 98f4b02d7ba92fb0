"""What the MLflow UI shows of a study besides its metrics: the experiment's kind tag, the study
run's description, trial runs' system metrics, and the study's progress lines."""

from __future__ import annotations

import time
from types import SimpleNamespace

from mlflow.tracking import MlflowClient

from tuner.study.stopping import StudyStopper
from tuner.study.strategies import get_strategy
from tuner.tracking import schema
from tuner.tracking import writer as tracking
from tuner.tracking.description import (NOTE_TAG, describe_study, describe_study_after_promotion,
                                        experiment_page, study_description)
from tuner.tracking.system_metrics import start_system_metrics, stop_system_metrics

DATASET = tracking.DatasetInfo("model_ii-32px", "abc123def456789", "/data/x", "model_ii")


def test_experiments_open_on_training_runs(sqlite_uri):
    client = MlflowClient(sqlite_uri)
    exp = tracking.ensure_experiment(client, "ui-kind")
    assert client.get_experiment(exp).tags[schema.EXPERIMENT_KIND_TAG] == "custom_model_development"
    old = client.create_experiment("ui-kind-old")  # made before lenstune set the tag
    assert tracking.ensure_experiment(client, "ui-kind-old") == old
    assert client.get_experiment(old).tags[schema.EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert experiment_page("7") == "http://127.0.0.1:5000/#/experiments/7?workflowType=machine_learning"


def test_study_description_then_champion_after_promotion(sqlite_uri):
    client = MlflowClient(sqlite_uri)
    exp = tracking.ensure_experiment(client, "ui-note")
    run = tracking.start_study_run(client, exp, "s-note", {}, DATASET)
    describe_study(client, run, study_description(
        "s-note", families=["levit", "cvt"], profile="micro", samples=3, max_epochs=4,
        dataset_name=DATASET.name, dataset_source=DATASET.source, preset="model_ii",
        image_size=32, digest=DATASET.digest))
    note = client.get_run(run).data.tags[NOTE_TAG]
    for text in ("`levit`, `cvt`", "profile `micro`", "3 trials per family", "up to 4 epochs",
                 "`model_ii-32px`", "32 px", "`abc123def456`", "/data/x", "not promoted yet"):
        assert text in note, text
    result = SimpleNamespace(
        study_run_id=run, model_name="lenstune-model_ii", version="2", family="levit",
        trial_run_id="r1", decision="promoted", message="lenstune-model_ii v2 is the new champion",
        candidate=SimpleNamespace(auc_macro=0.91234, acc=0.8, n_images=42))
    for _ in range(2):  # a second promotion replaces the paragraph, never appends
        describe_study_after_promotion(sqlite_uri, result)
    note = client.get_run(run).data.tags[NOTE_TAG]
    assert note.count("**Champion:**") == 1 and "not promoted yet" not in note
    assert "`models:/lenstune-model_ii@champion`" in note and "version 2" in note
    assert "0.9123" in note and note.startswith("**Study `s-note`:**")


def test_system_metrics_reach_the_run_also_from_a_short_trial(sqlite_uri, monkeypatch):
    client = MlflowClient(sqlite_uri)
    exp = tracking.ensure_experiment(client, "ui-system")
    run = client.create_run(exp).info.run_id
    monitor = start_system_metrics(run, sqlite_uri, interval_s=30)  # ends before one interval
    time.sleep(0.3)
    stop_system_metrics(monitor)
    metrics = client.get_run(run).data.metrics
    assert "system/cpu_utilization_percentage" in metrics
    assert "system/system_memory_usage_megabytes" in metrics
    monkeypatch.setenv("LENSTUNE_SYSTEM_METRICS", "false")
    assert start_system_metrics(run, sqlite_uri) is None
    stop_system_metrics(None)


def _trial(trial_id, status, best, epoch):
    return SimpleNamespace(trial_id=trial_id, status=status,
                           last_result={schema.BEST_OBJECTIVE: best, "epoch": epoch}, config={})


def test_study_progress_lines_count_trials_and_keep_the_best(monkeypatch):
    from tuner.study import progress as progress_mod

    lines = []
    monkeypatch.setattr(progress_mod.log, "info", lambda message: lines.append(message))
    callback = progress_mod.StudyProgress("swin", 2, 5, num_samples=32, max_epochs=12)
    done = _trial("a", "TERMINATED", 0.91, 12)
    running = _trial("b", "RUNNING", 0.95, 3)
    stopped = _trial("c", "RUNNING", 0.80, 4)  # Tune marks it TERMINATED after the callbacks
    callback.on_trial_complete(0, [done, running, stopped], stopped)
    assert lines == ["family 2/5 swin: trial 2/32 (c) stopped by ASHA after 4 of 12 epochs, "
                     "best val AUC 0.8000; best so far 0.9500 (trial b)"]
    callback.on_trial_complete(0, [done, running, stopped], done)
    assert lines[-1].startswith("family 2/5 swin: trial 1/32 (a) completed 12 epochs")
    # the same names the trial's MLflow run gets (Strategy.trial_end): the strategy's scheduler,
    # or the study's stop once the study stopper has stopped the family
    plateau = StudyStopper(schema.OBJECTIVE, plateau=3)
    plateau.reason, plateau.message = schema.STOP_PLATEAU, "no better in 3 trials"
    for strategy, stopper, how in (
            ("hyperband-bohb", None, "stopped by HyperBand (BOHB) after 4 of 12"),
            ("asha-tpe", plateau, "stopped with the study (plateau_stopped) after 4/12"),
            ("random", plateau, "stopped with the study (plateau_stopped) after 4/12")):
        callback = progress_mod.StudyProgress("swin", 2, 5, 32, 12, strategy=get_strategy(strategy),
                                              stopper=stopper)
        callback.on_trial_complete(0, [done, running, stopped], stopped)
        assert f"(c) {how} epochs, best val AUC 0.8000" in lines[-1]
