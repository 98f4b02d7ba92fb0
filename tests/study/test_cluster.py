"""The study survives a SIGKILLed driver (--resume), and runs under `ray job submit`."""

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.servers import free_port
from tests.study.studies import (REPO, check_restored_not_restarted, check_trial_runs, ray_env,
                                  run_args, run_study_process, trial_runs)

pytestmark = pytest.mark.slow
VENV_BIN = Path(os.sys.executable).parent


def _kill_group(proc: subprocess.Popen, sig=signal.SIGKILL) -> None:
    """Signal the process group this test started (start_new_session=True), then reap it;
    SIGKILL when it outlives a SIGTERM by 30 s."""
    for signal_ in (sig, signal.SIGKILL):
        try:
            os.killpg(proc.pid, signal_)
            proc.wait(timeout=30)
            return
        except ProcessLookupError:
            proc.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            continue


def test_sigkilled_driver_resumes_without_duplicates(micro_dataset, tmp_path):
    """Two families tuned side by side, the driver SIGKILLed once a trial has a second
    checkpoint, then --resume: both families finish with their trial counts, no duplicates."""
    runs = tmp_path / "runs"
    families = ("vit", "levit")
    args = run_args(micro_dataset, runs, *families, samples=2, extra=("--study-name", "killed"))
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(args, cwd=REPO, env=ray_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    study_dir = runs / "studies" / "killed"
    pattern = "*/*/checkpoint_00000[1-9]"  # <family>/<trial>/: a trial's second checkpoint
    deadline = time.time() + 180
    while time.time() < deadline and not list(study_dir.glob(pattern)):
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.5)
    assert list(study_dir.glob(pattern)), "no trial reached its second epoch"
    trained = {p.parent.name for p in study_dir.glob(pattern)}
    os.kill(proc.pid, signal.SIGKILL)  # the driver, by pid
    time.sleep(1)
    _kill_group(proc)  # then the local Ray it started
    resumed = run_study_process(run_args(micro_dataset, runs, *families, samples=2,
                                         extra=("--study-name", "killed", "--resume")))
    (tmp_path / "resumed.log").write_text(resumed.stdout + resumed.stderr)  # kept for a post-mortem
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    studies, trials = trial_runs(uri)
    assert len(studies) == 1 and studies[0].info.status == "FINISHED"
    assert len(trials) == 4 and len({r.data.tags["trial_id"] for r in trials}) == 4
    for family in families:
        assert sum(r.data.tags["family"] == family for r in trials) == 2, family
    check_trial_runs(uri, trials, studies[0].info.run_id, 3)
    folders = {p.name for family in families for p in (study_dir / family).iterdir() if p.is_dir()}
    check_restored_not_restarted(folders, trained, trials)
    # the searchers' Optuna studies survived in their storage: each family's trials told, none
    # left running, matched to the MLflow runs by their Ray trial ids
    import optuna

    storage = f"sqlite:///{runs / 'optuna.db'}"
    for family in families:
        study = optuna.load_study(study_name=f"killed/{family}", storage=storage)
        told = {t.user_attrs.get("ray_trial_id"): t.state.name for t in study.trials}
        mlflow_ids = {r.data.tags["trial_id"] for r in trials if r.data.tags["family"] == family}
        assert {k: v for k, v in told.items() if v == "COMPLETE"}.keys() == mlflow_ids, told
        assert "RUNNING" not in told.values(), told


def _wait_http(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        assert proc.poll() is None, "ray start exited early"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{url} not ready in {timeout_s} s")


def test_ray_job_submit_runs_a_study(micro_dataset, tmp_path):
    env = ray_env(PATH=f"{VENV_BIN}:{os.environ['PATH']}")
    port, dash = free_port(), free_port()
    head = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--block", "--port", str(port),
         "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1",
         "--dashboard-port", str(dash), "--include-dashboard", "true", "--num-cpus", "2",
         "--temp-dir", env["RAY_TMPDIR"]],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        address = f"http://127.0.0.1:{dash}"
        _wait_http(address + "/api/jobs/", head)  # the job API, not just the dashboard
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        study = run_args(micro_dataset, tmp_path / "runs", "vit", samples=2,
                         extra=("--max-epochs", "2", "--tracking-uri", uri,
                                "--storage", str(tmp_path / "studies")),
                         python="python", local_cpus=None)  # the cluster decides the CPUs
        for _ in range(6):
            job = subprocess.run(
                [str(VENV_BIN / "ray"), "job", "submit", "--address", address,
                 "--working-dir", str(REPO), "--", *study],
                env=env, capture_output=True, text=True, timeout=300)
            # The job API answers before the head's job agent is up (slow on a loaded machine);
            # Ray refuses the submission then, without starting anything, and asks to retry.
            if "No available agent to submit job" not in job.stdout + job.stderr:
                break
            time.sleep(5)
        assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
        assert "succeeded" in job.stdout.lower()
        studies, trials = trial_runs(uri)
        assert len(studies) == 1 and len(trials) == 2
        check_trial_runs(uri, trials, studies[0].info.run_id, 2)
    finally:
        _kill_group(head, signal.SIGTERM)
