"""The outbox: journalled writes that wait out a tracking server's outage and lose nothing."""

from __future__ import annotations

import json
import threading
import time

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from mlflow.tracking import MlflowClient

from tuner.tracking import outbox as ob
from tuner.tracking import writer as tracking

DATASET = tracking.DatasetInfo("model_ii-32px", "abc123", "/data/x", "model_ii")


def _trial_run(uri: str, experiment: str, trial_id: str = "t1") -> tuple[MlflowClient, str, str, str]:
    client = MlflowClient(uri)
    exp = tracking.ensure_experiment(client, experiment)
    parent = tracking.start_study_run(client, exp, "s1", {"seed": 0}, DATASET)
    run = tracking.start_trial_run(client, experiment_id=exp, parent_run_id=parent,
                                   study_name="s1", trial_id=trial_id, family="vit",
                                   run_name=f"vit-{trial_id}", params={}, dataset=DATASET)
    return client, exp, parent, run


class FlakyClient:
    """An MlflowClient whose writes fail as an unreachable server does while ``down`` is set."""

    def __init__(self, client: MlflowClient):
        self._client, self.down = client, threading.Event()
        self.attempts = 0

    def __getattr__(self, name):
        real = getattr(self._client, name)

        def call(*args, **kwargs):
            self.attempts += 1
            if self.down.is_set():
                raise MlflowException("API request to http://127.0.0.1:9/api/2.0/mlflow/runs/"
                                      "log-batch failed with exception Max retries exceeded "
                                      "(Connection refused)")
            return real(*args, **kwargs)
        return call


def _steps(client, run_id: str, key: str = "val_auc_macro") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_writes_are_sent_in_order_and_the_journal_goes(sqlite_uri, tmp_path):
    client, _, _, run = _trial_run(sqlite_uri, "outbox-order")
    box = ob.Outbox(client, tmp_path, "trial-t1")
    for epoch in (1, 2, 3):
        box.metrics(run, {"val_auc_macro": 0.5 + epoch / 10}, step=epoch)
    folder = tmp_path / "art"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    box.artifacts(run, folder)
    folder.joinpath("config.json").unlink()  # the outbox copied it: the caller may delete its own
    box.tags(run, {"best_epoch": "3"})
    assert box.flush(wait_s=30)
    assert _steps(client, run) == [1, 2, 3]
    assert {a.path for a in client.list_artifacts(run)} == {"config.json"}
    box.end_run(run, "completed")
    assert box.close()
    assert client.get_run(run).info.status == "FINISHED"
    assert client.get_run(run).data.tags["best_epoch"] == "3"
    assert list(tmp_path.glob("*.jsonl")) == [] and list((tmp_path / ob.BLOBS).iterdir()) == []
    box.close()  # idempotent


def test_a_refused_write_is_raised_at_flush_and_the_rest_is_sent(sqlite_uri, tmp_path):
    client, _, _, run = _trial_run(sqlite_uri, "outbox-refused")
    box = ob.Outbox(client, tmp_path, "trial-t1")
    box.metrics("no-such-run-id", {"val_auc_macro": 0.5}, step=1)
    box.metrics(run, {"val_auc_macro": 0.6}, step=1)
    with pytest.raises(ob.OutboxError, match="refused 1 write"):
        box.flush(wait_s=30)
    assert _steps(client, run) == [1]
    assert box.close()  # the refusal was raised once


def test_an_outage_keeps_writes_on_disk_and_sends_them_when_the_server_is_back(sqlite_uri,
                                                                               tmp_path):
    real, _, _, run = _trial_run(sqlite_uri, "outbox-outage")
    flaky = FlakyClient(real)
    flaky.down.set()
    box = ob.Outbox(flaky, tmp_path, "trial-t1", retry_s=0.2)
    started = time.monotonic()
    for epoch in (1, 2):
        box.metrics(run, {"val_auc_macro": 0.5 + epoch / 10}, step=epoch)
    assert not box.flush(wait_s=30)  # returns once the server is seen away, not after 30 s
    assert time.monotonic() - started < 10 and box.away and box.pending == 2
    journal = next(tmp_path.glob("*.jsonl"))
    assert [json.loads(line)["metrics"][0][3] for line in journal.read_text().splitlines()] == [1, 2]
    box.metrics(run, {"val_auc_macro": 0.8}, step=3)
    assert _steps(real, run) == []
    flaky.down.clear()
    assert box.close(wait_s=30)
    assert _steps(real, run) == [1, 2, 3]
    assert flaky.attempts > 2  # it retried while the server was away
    assert not journal.exists()


def test_a_journal_left_behind_is_replayed_once_and_a_live_one_is_not(sqlite_uri, tmp_path):
    real, _, _, run = _trial_run(sqlite_uri, "outbox-replay")
    flaky = FlakyClient(real)
    flaky.down.set()
    left = ob.Outbox(flaky, tmp_path, "trial-t1", retry_s=0.2)
    left.metrics(run, {"val_auc_macro": 0.6}, step=1)
    left.end_run(run, "asha_stopped", "stopped by the scheduler after 1 of 3 epochs")
    assert not left.close(wait_s=0.5)  # the process ends with the server still away
    live = ob.Outbox(flaky, tmp_path, "trial-t2", retry_s=0.2)
    live.metrics(run, {"val_auc_macro": 0.7}, step=2)

    assert ob.replay_outbox(real, tmp_path) == (2, 0)  # the left journal, not the live one
    assert _steps(real, run) == [1]
    got = real.get_run(run)
    assert (got.data.tags["stop_reason"], got.info.status) == ("asha_stopped", "KILLED")
    assert ob.replay_outbox(real, tmp_path) == (0, 0)  # sent once
    flaky.down.clear()
    assert live.close(wait_s=30)
    assert _steps(real, run) == [1, 2]


def test_replay_during_an_outage_keeps_what_was_not_sent(sqlite_uri, tmp_path):
    real, _, _, run = _trial_run(sqlite_uri, "outbox-replay-outage")
    flaky = FlakyClient(real)
    flaky.down.set()
    left = ob.Outbox(flaky, tmp_path, "trial-t1", retry_s=0.2)
    left.metrics(run, {"val_auc_macro": 0.6}, step=1)
    left.close(wait_s=0.2)
    assert ob.replay_outbox(flaky, tmp_path) == (0, 1)
    assert ob.replay_outbox(real, tmp_path) == (1, 0)
    assert _steps(real, run) == [1]


def test_a_new_writer_adopts_what_an_ended_one_left(sqlite_uri, tmp_path):
    real, _, _, run = _trial_run(sqlite_uri, "outbox-adopt")
    flaky = FlakyClient(real)
    flaky.down.set()
    left = ob.Outbox(flaky, tmp_path, "trial-t1", retry_s=0.2)
    left.metrics(run, {"val_auc_macro": 0.6}, step=1)
    left.close(wait_s=0.2)
    box = ob.Outbox(real, tmp_path, "trial-t2", adopt=True)
    box.metrics(run, {"val_auc_macro": 0.7}, step=2)
    assert box.close(wait_s=30)
    assert _steps(real, run) == [1, 2] and list(tmp_path.glob("*.jsonl")) == []


def test_driver_operations_open_end_and_tag_a_trial_run(sqlite_uri, tmp_path):
    client, exp, parent, run = _trial_run(sqlite_uri, "outbox-driver")
    box = ob.Outbox(client, tmp_path, "driver-vit")
    trial = {"experiment_id": exp, "parent_run_id": parent}
    box.submit({"op": "open_trial", "fields": {
        **trial, "study_name": "s1", "trial_id": "t2", "family": "vit",
        "dataset": {"name": "d", "digest": "abc", "source": "/d", "preset": "model_ii"},
        "params": {"train.lr": "0.01"}}})
    box.submit({"op": "trial_tags", "fields": {**trial, "trial_id": "t2",
                                               "tags": {"lenstune.retries": "1"}}})
    box.submit({"op": "end_trial", "fields": {**trial, "trial_id": "t2", "run_id": None,
                                              "stop_reason": "failed",
                                              "message": "ActorDiedError: the worker died"}})
    assert box.close(wait_s=30)
    opened = tracking.find_trial_run(client, exp, parent, "t2")
    got = client.get_run(opened)
    assert got.data.params["train.lr"] == "0.01" and got.info.status == "FAILED"
    assert got.data.tags["stop_message"] == "ActorDiedError: the worker died"
    assert got.data.tags["lenstune.retries"] == "1"


@pytest.mark.parametrize("exc, outage", [
    (MlflowException("API request to x failed with exception Max retries exceeded"), True),
    (MlflowException("Run 'x' not found", error_code=RESOURCE_DOES_NOT_EXIST), False),
    (MlflowException("(sqlite3.OperationalError) database or disk is full"), False),
    (ConnectionRefusedError(111, "Connection refused"), True),
    (OSError(28, "No space left on device"), False),
    (ValueError("bad"), False),
])
def test_what_counts_as_an_outage(exc, outage):
    assert ob.is_outage(exc) is outage


def test_server_watch_counts_the_time_a_server_is_away():
    from tests.servers import free_port

    watch = ob.ServerWatch(f"http://127.0.0.1:{free_port()}", interval_s=0.2).start()
    try:
        deadline = time.monotonic() + 10
        while watch.away_for() < 0.5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert watch.away_for() >= 0.5 and "unreachable" in watch.reason
    finally:
        watch.stop()
    assert ob.ServerWatch("sqlite:///x.db").start().away_for() == 0.0


def test_a_trial_that_errored_before_it_started_gets_a_failed_run(sqlite_uri):
    from types import SimpleNamespace as R

    from tuner.study.driver import _record_unseen_failures

    client, exp, parent, run = _trial_run(sqlite_uri, "unseen", trial_id="seen_00000")
    ctx = R(experiment_id=exp, parent_run_id=parent, study_name="s1", family="vit",
            dataset_name="d", dataset_digest="abc", dataset_source="/d", dataset_preset="model_ii")
    results = [R(error=None, metrics={"trial_id": "ok_00001"}, path="/s/vit/train_trial_ok_00001",
                 config={}),
               R(error=RuntimeError("Trainable runner reuse requires reset_config()"), metrics={},
                 path="/s/vit/train_trial_lost_00002", config={"train": {"lr": 0.01}}),
               R(error=RuntimeError("seen"), metrics={"trial_id": "seen_00000"}, path="", config={})]
    _record_unseen_failures(client, ctx, results)
    lost = client.get_run(tracking.find_trial_run(client, exp, parent, "lost_00002"))
    assert lost.info.status == "FAILED" and lost.data.params["train.lr"] == "0.01"
    assert lost.data.tags["stop_message"] == "RuntimeError: Trainable runner reuse requires reset_config()"
    assert tracking.find_trial_run(client, exp, parent, "ok_00001") is None  # not an error
    assert client.get_run(run).info.status == "RUNNING"  # had its run: left to its own end


def test_the_stop_callback_pickles_without_its_threads(tmp_path):
    import pickle

    from tuner.study.search import TrialStopCallback

    callback = TrialStopCallback("http://127.0.0.1:9", "1", "p", 3, {"family": "vit"},
                                 outbox_dir=str(tmp_path), outage_limit_s=5)
    callback._watch = ob.ServerWatch("http://127.0.0.1:9")
    again = pickle.loads(pickle.dumps(callback))
    assert again._watch is None and again._outbox is None and again.outage_limit_s == 5
