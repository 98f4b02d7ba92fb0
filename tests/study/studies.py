"""Helpers of the study integration tests: run the entry point as a process, read MLflow."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def ray_env(**extra: str) -> dict[str, str]:
    """Environment for a Ray process: no usage stats, no token auth, a short private temp dir."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_TMPDIR": tempfile.mkdtemp(prefix="rt", dir="/tmp"),
           "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0"}
    env.pop("RAY_ADDRESS", None)
    env.update(extra)
    return env


def run_args(data: Path, runs: Path, *families: str, samples: int = 2, extra: tuple = (),
             python: str = PYTHON, local_cpus: int | None = 2) -> list[str]:
    """Command line of a micro study on ``data`` with everything under ``runs``."""
    cpus = ["--num-cpus", str(local_cpus)] if local_cpus else []
    return [python, "tuner/run.py", "--family", ",".join(families),
            "--profile", "micro", "--data", str(data), "--samples", str(samples),
            "--runs-dir", str(runs), *cpus, "--max-concurrent", "2", "--experiment", "it", *extra]


def run_study_process(args: list[str], timeout_s: float = 240, **env) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, env=ray_env(**env), capture_output=True, text=True,
                          timeout=timeout_s)


def trial_runs(uri: str, experiment: str = "it") -> tuple[list, list]:
    """(study runs, trial runs) of an experiment."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    studies = [r for r in runs if r.data.tags.get("lenstune.kind") == "study"]
    trials = [r for r in runs if r.data.tags.get("lenstune.kind") == "trial"]
    return studies, trials


def check_trial_runs(uri: str, trials: list, parent_id: str, max_epochs: int) -> None:
    """Every trial is nested, has one metric point per epoch, and a stop reason that matches
    its epochs and status."""
    client = MlflowClient(uri)
    for run in trials:
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parent_id
        history = client.get_metric_history(run.info.run_id, "val_auc_macro")
        steps = sorted(m.step for m in history)
        assert steps == list(range(1, len(steps) + 1)), (tags["trial_id"], steps)
        for key in ("train_loss", "val_loss", "val_acc", "epoch_seconds", "images_per_second",
                    "val_auc_no_sub", "val_auc_cdm", "val_auc_axion"):
            assert len(client.get_metric_history(run.info.run_id, key)) == len(steps), key
        expected = ("completed", "FINISHED") if len(steps) == max_epochs else ("asha_stopped", "KILLED")
        assert (tags.get("stop_reason"), run.info.status) == expected, (tags["trial_id"], steps)
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"checkpoint", "roc_curves.png", "confusion_matrix.png", "config.json"} <= names
        assert run.data.params["family"] == tags["family"]
        assert "train.lr" in run.data.params and "dataset_digest" in run.data.params


def check_restored_not_restarted(trial_dirs: set[str], trained: set[str], trials: list) -> None:
    """After a SIGKILL and ``--resume``: the trials that had trained before the kill (their
    storage folders, ``train_trial_<id>``) went on in their own MLflow runs, and the storage
    holds a folder for every trial run and nothing else. (A trial started in the moment before
    the kill, which the saved experiment state does not name, is replaced by the restored
    study; its run and folder are deleted.)"""
    kept = {f"train_trial_{r.data.tags['trial_id']}" for r in trials}
    assert trained and trained <= kept, (trained, kept)
    assert kept == trial_dirs, (trial_dirs, kept)
