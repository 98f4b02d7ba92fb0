"""Resume never discards or reverses. A driver killed while Tune's saved state lags behind
MLflow leaves finished trials listed as unfinished, or not listed at all; ``--resume`` must keep
every finished trial's run, folder and stop reason, count it toward ``--samples``, and never
train a trial the scheduler had stopped.

The lagging state is made exactly: a micro study runs to its end through ``tuner/run.py``, then
its saved files are put back to what a driver killed at the wrong moment leaves (one finished
trial marked PENDING in the experiment state, one missing from it, the family not marked done,
the study run still RUNNING), and ``tuner/run.py --resume`` runs on them as a user would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.study.studies import run_args, run_study_process, trial_runs

pytestmark = pytest.mark.slow

SAMPLES, EPOCHS = 4, 2


def _lag_experiment_state(family_dir: Path, pending: str, lost: str) -> None:
    """Mark trial ``pending`` PENDING and drop trial ``lost`` from the newest experiment state."""
    experiment = max(family_dir.glob("experiment_state-*.json"))
    state = json.loads(experiment.read_text())
    kept = []
    for json_state, metadata in state["trial_data"]:
        trial = json.loads(json_state)
        if trial["trial_id"] == lost:
            continue
        if trial["trial_id"] == pending:
            trial["status"] = "PENDING"
            json_state = json.dumps(trial)
        kept.append([json_state, metadata])
    assert len(kept) == len(state["trial_data"]) - 1
    state["trial_data"] = kept
    experiment.write_text(json.dumps(state))


def _snapshot(uri: str) -> dict[str, tuple]:
    client = MlflowClient(uri)
    _, trials = trial_runs(uri)
    return {r.data.tags["trial_id"]: (
        r.info.run_id, r.data.tags.get("stop_reason"), r.info.status,
        len(client.get_metric_history(r.info.run_id, "val_auc_macro"))) for r in trials}


def test_resume_keeps_finished_trials_and_their_decisions(tmp_path):
    from tuner.data import ensure_simulated

    data = ensure_simulated(tmp_path / "data", "model_ii", 30, seed=0, img_size=32)
    runs = tmp_path / "runs"
    args = run_args(data, runs, "vit", samples=SAMPLES,
                    extra=("--max-epochs", str(EPOCHS), "--study-name", "lag", "--no-promote"))
    first = run_study_process(args, timeout_s=600)
    assert first.returncode == 0, first.stderr[-3000:]
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    before = _snapshot(uri)
    assert len(before) == SAMPLES
    stopped = [t for t, v in before.items() if v[1] == "asha_stopped"]
    completed = [t for t, v in before.items() if v[1] == "completed"]
    assert stopped and completed, before  # ASHA stops some trials at the 1-epoch rung
    pending, lost = stopped[0], completed[0]

    family_dir = runs / "studies" / "lag" / "vit"  # the Tune storage of the runs folder
    _lag_experiment_state(family_dir, pending=pending, lost=lost)
    client = MlflowClient(uri)
    studies, _ = trial_runs(uri)
    parent = studies[0].info.run_id
    client.delete_tag(parent, "lenstune.done.vit")
    client.update_run(parent, status="RUNNING")

    again = run_study_process([*args, "--resume"], timeout_s=600)
    assert again.returncode == 0, again.stderr[-3000:]
    after = _snapshot(uri)
    assert after == before, (before, after)  # same runs, reasons, statuses and epochs
    folders = {p.name for p in family_dir.iterdir() if p.name.startswith("train_trial_")}
    assert folders == {f"train_trial_{t}" for t in before}
    assert "lenstune.orphan_trial_runs_deleted.vit" not in client.get_run(parent).data.tags


def _named_checkpoints(family_dir: Path) -> dict[str, Path]:
    """Trial id -> the checkpoint the newest saved experiment state will restore it from, for
    the trials it lists as unfinished."""
    import cloudpickle

    experiment = max(family_dir.glob("experiment_state-*.json"))
    named = {}
    for json_state, metadata in json.loads(experiment.read_text())["trial_data"]:
        trial = json.loads(json_state)
        if trial["status"] == "TERMINATED":
            continue
        manager = json.loads(metadata)["checkpoint_manager"]
        manager = cloudpickle.loads(bytes.fromhex(manager["value"]))
        latest = manager.latest_checkpoint_result
        if latest is not None:
            named[trial["trial_id"]] = Path(latest.checkpoint.path)
    return named


def test_a_damaged_checkpoint_falls_back_to_the_previous_one_on_resume(tmp_path):
    """The driver is SIGKILLed while trials train; the checkpoint the saved state will restore
    each unfinished trial from is then truncated (a torn write). ``--resume`` restores such a
    trial from its previous intact checkpoint (or from scratch when there is none) with a
    warning tagged on its run, logs no epoch twice and finishes the study."""
    import os
    import signal
    import subprocess
    import time

    from tests.study.studies import REPO, check_trial_runs, ray_env
    from tuner.data import ensure_simulated

    epochs = 12  # checkpoints at the rungs 1, 2, 4, 8 and at 12
    data = ensure_simulated(tmp_path / "data", "model_ii", 1000, seed=0, img_size=32)
    runs = tmp_path / "runs"
    args = run_args(data, runs, "vit", samples=2,
                    extra=("--max-epochs", str(epochs), "--study-name", "torn", "--no-promote"))
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(args, cwd=REPO, env=ray_env(), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    family_dir = runs / "studies" / "torn" / "vit"
    deadline = time.time() + 300
    while time.time() < deadline and not list(family_dir.glob("*/checkpoint_000002")):
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait(timeout=60)

    named = _named_checkpoints(family_dir)
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    # a trial whose run had ended is replayed from MLflow on resume, never restored: leave it
    ended = {r.data.tags["trial_id"] for r in trial_runs(uri)[1]
             if r.data.tags.get("stop_reason") in ("completed", "asha_stopped")}
    named = {t: c for t, c in named.items() if t not in ended}
    assert named, "every trial had finished before the kill"
    for checkpoint in named.values():
        weights = checkpoint / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])

    again = run_study_process([*args, "--resume"], timeout_s=600)
    (tmp_path / "resumed.log").write_text(again.stdout + again.stderr)
    assert again.returncode == 0, again.stderr[-3000:]
    studies, trials = trial_runs(uri)
    assert [s.info.status for s in studies] == ["FINISHED"] and len(trials) == 2
    check_trial_runs(uri, trials, studies[0].info.run_id, epochs)
    tags = {r.data.tags["trial_id"]: r.data.tags.get("lenstune.checkpoint_fallback", "")
            for r in trials}
    for trial_id, checkpoint in named.items():
        assert checkpoint.name in tags[trial_id] and "damaged" in tags[trial_id], tags
        assert "falling back to" in tags[trial_id] or "no intact checkpoint" in tags[trial_id]
