"""Faults of a trial, in a study run as users run it (``python tuner/run.py``, local Ray):

- its worker process is killed (SIGKILL) mid-training: Tune retries it from its last
  checkpoint, the run records the attempt and the cause, no epoch is logged twice, the study
  ends normally;
- its loss becomes NaN (a learning rate far too large, set in the search-space YAML as a user
  would): not retried, the run ends ``failed`` with ``NonFiniteLossError``, the study logs
  ``failures.csv`` and exits 1 with one line saying so.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.study.studies import REPO, check_trial_runs, ray_env, run_args, trial_runs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from tuner.data import ensure_simulated

    # epochs of ~1 s on a CPU: long enough to kill a worker in the middle of one
    return ensure_simulated(tmp_path_factory.mktemp("data") / "faults", "model_ii", 300, seed=0,
                            img_size=32)


def _running_trial_with_checkpoint(uri: str, epochs: int):
    """(run id, worker pid) of a running trial past its first checkpoint (epoch 1), or None."""
    client = MlflowClient(uri)
    try:
        _, trials = trial_runs(uri)
    except Exception:  # the experiment may not exist yet
        return None
    for run in trials:
        pid = run.data.tags.get("lenstune.worker_pid")
        if run.info.status != "RUNNING" or pid is None:
            continue
        steps = {m.step for m in client.get_metric_history(run.info.run_id, "val_auc_macro")}
        if 1 <= len(steps) < epochs - 2:
            return run.info.run_id, int(pid)
    return None


def test_a_killed_worker_is_retried_from_its_checkpoint_with_the_cause_recorded(dataset, tmp_path):
    epochs = 8
    runs = tmp_path / "runs"
    args = run_args(dataset, runs, "vit", samples=3,
                    extra=("--max-epochs", str(epochs), "--no-promote"))
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    log = tmp_path / "study.log"
    with open(log, "w") as out:
        study = subprocess.Popen(args, cwd=REPO, env=ray_env(), stdout=out,
                                 stderr=subprocess.STDOUT, text=True)
    try:
        target, deadline = None, time.monotonic() + 300
        while target is None and time.monotonic() < deadline:
            assert study.poll() is None, log.read_text()[-3000:]
            target = _running_trial_with_checkpoint(uri, epochs)
            time.sleep(0.2)
        assert target, "no trial to kill"
        run_id, pid = target
        os.kill(pid, signal.SIGKILL)
        rc = study.wait(timeout=900)
    finally:
        if study.poll() is None:
            study.kill()
    text = log.read_text()
    assert rc == 0, text[-4000:]
    studies, trials = trial_runs(uri)
    check_trial_runs(uri, trials, studies[0].info.run_id, epochs)  # one point per epoch, no repeat
    killed = MlflowClient(uri).get_run(run_id)
    assert killed.data.tags.get("lenstune.retries") == "1", killed.data.tags
    cause = killed.data.tags.get("lenstune.retried_after", "")
    assert "ActorDiedError" in cause or "RayActorError" in cause or "died" in cause, cause
    assert killed.data.tags["lenstune.worker_pid"] != str(pid)  # a new worker went on
    assert killed.info.status in ("FINISHED", "KILLED")
    assert all(r.info.status != "RUNNING" for r in trials)


def _repo_with_search_space(tmp_path: Path, family: str, edit) -> Path:
    """A copy of the repository's code and search spaces, with ``search_spaces/<family>.yaml``
    edited by ``edit(dict)`` as a user would edit it."""
    copy = tmp_path / "repo"
    for name in ("tuner", "search_spaces"):
        shutil.copytree(REPO / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    path = copy / "search_spaces" / f"{family}.yaml"
    space = yaml.safe_load(path.read_text())
    edit(space)
    path.write_text(yaml.safe_dump(space))
    return copy


def test_a_nan_loss_fails_its_trials_with_the_cause_and_the_study_exits_1(dataset, tmp_path):
    def huge_lr(space):
        train = space["profiles"]["micro"]["train"]
        train["search"].pop("lr")
        train["fixed"]["lr"] = 1.0e12

    repo = _repo_with_search_space(tmp_path, "vit", huge_lr)
    runs = tmp_path / "runs"
    args = run_args(dataset, runs, "vit", samples=2, extra=("--no-promote",))
    proc = subprocess.run(args, cwd=repo, env=ray_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-4000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("lenstune tune: error: all 2 trials failed"), lines[-3:]
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    studies, trials = trial_runs(uri)
    assert len(trials) == 2
    for run in trials:
        assert run.info.status == "FAILED"
        assert run.data.tags["stop_reason"] == "failed"
        assert run.data.tags["stop_message"].startswith("NonFiniteLossError"), run.data.tags
        assert "lenstune.retries" not in run.data.tags  # the configuration's fault: no retry
    client = MlflowClient(uri)
    failures = client.download_artifacts(studies[0].info.run_id, "failures.csv", str(tmp_path))
    rows = Path(failures).read_text().strip().splitlines()
    assert rows[0] == "family,trial_id,run_id,reason" and len(rows) == 3
    assert all("NonFiniteLossError" in row for row in rows[1:])
