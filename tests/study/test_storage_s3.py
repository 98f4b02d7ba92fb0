"""Ray Tune storage on S3 (``--storage s3://bucket/prefix``) against a real S3 endpoint (moto on
127.0.0.1), reached the way a user reaches MinIO or Ceph: AWS_ENDPOINT_URL and credentials in
the environment. The study's state and checkpoints live only in the bucket, and a study whose
driver is SIGKILLed resumes from there."""

import os
import signal
import subprocess
import time

import pytest

from tests import servers
from tests.study.studies import (REPO, check_restored_not_restarted, check_trial_runs, ray_env,
                                  run_args, run_study_process, trial_runs)

pytestmark = pytest.mark.slow
BUCKET = "lenstune-studies"
STORAGE = f"s3://{BUCKET}/studies"


@pytest.fixture(scope="module")
def s3_endpoint() -> str:
    with servers.s3_server() as url:
        servers.create_bucket(url, BUCKET)
        yield url


def s3_env(endpoint: str) -> dict[str, str]:
    return {**servers.S3_DUMMY_ENV, "AWS_ENDPOINT_URL": endpoint}


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group this test started (start_new_session=True) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def test_study_on_s3_survives_a_sigkilled_driver(micro_dataset, s3_endpoint, tmp_path):
    runs = tmp_path / "runs"
    args = run_args(micro_dataset, runs, "levit", samples=3,
                    extra=("--study-name", "s3kill", "--storage", STORAGE, "--no-promote"))
    prefix = "studies/s3kill/levit/"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(args, cwd=REPO, env=ray_env(**s3_env(s3_endpoint)), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        keys: list[str] = []
        # Kill once a trial has uploaded its second epoch and the driver its experiment state.
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            keys = servers.list_objects(s3_endpoint, BUCKET)
            if (any("/checkpoint_000001/" in k for k in keys)
                    and any(k.startswith(prefix + "experiment_state-") for k in keys)):
                break
            time.sleep(0.5)
        assert any("/checkpoint_000001/" in k for k in keys), "no trial reached its second epoch"
        os.kill(proc.pid, signal.SIGKILL)  # the driver, by pid
        time.sleep(1)
    finally:
        _kill_group(proc)  # then the local Ray it started
    assert not (runs / "studies").exists()  # Tune kept nothing on local storage

    resumed = run_study_process(run_args(micro_dataset, runs, "levit", samples=3, extra=(
        "--study-name", "s3kill", "--storage", STORAGE, "--no-promote", "--resume")),
        **s3_env(s3_endpoint))
    (tmp_path / "resumed.log").write_text(resumed.stdout + resumed.stderr)  # kept for a post-mortem
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    uri = f"sqlite:///{runs / 'mlflow.db'}"
    studies, trials = trial_runs(uri)
    assert len(studies) == 1 and studies[0].info.status == "FINISHED"
    ids = sorted(r.data.tags["trial_id"] for r in trials)
    assert len(ids) == 3 and len(set(ids)) == 3, (ids, resumed.stderr[-3000:])
    check_trial_runs(uri, trials, studies[0].info.run_id, 3)
    at_kill, keys = keys, servers.list_objects(s3_endpoint, BUCKET)
    trial_dirs = {k[len(prefix):].split("/")[0] for k in keys
                  if k.startswith(prefix + "train_trial_") and "/" in k[len(prefix):]}
    trained = {k[len(prefix):].split("/")[0] for k in at_kill
               if k.startswith(prefix) and "/checkpoint_000001/" in k}
    check_restored_not_restarted(trial_dirs, trained, trials)
    for name in (f"train_trial_{r.data.tags['trial_id']}" for r in trials):
        assert any(k.startswith(f"{prefix}{name}/checkpoint_") and k.endswith("model.safetensors")
                   for k in keys), name
    assert {prefix + "tuner.pkl"} <= set(keys)
    assert any(k.startswith(prefix + "experiment_state-") for k in keys)
    assert not any(k.endswith(".lenstune-storage-check") for k in keys)
    assert not (runs / "studies").exists()


def test_unusable_s3_storage_exits_before_any_mlflow_run(micro_dataset, s3_endpoint, tmp_path):
    closed = f"http://{servers.LOOPBACK}:{servers.free_port()}"
    for endpoint, storage, why in ((closed, STORAGE, "could not connect"),
                                   (s3_endpoint, "s3://no-such-bucket/studies", "not found")):
        runs = tmp_path / why.replace(" ", "-")
        proc = run_study_process(run_args(micro_dataset, runs, "levit", samples=1,
                                          extra=("--storage", storage)), **s3_env(endpoint))
        assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
        assert f"storage {storage!r} is not writable" in proc.stderr and why in proc.stderr.lower()
        assert "Traceback" not in proc.stderr
        assert not (runs / "mlflow.db").exists()  # no MLflow store, let alone a run


def test_trial_whose_saved_checkpoint_was_deleted_on_s3_resumes_from_the_next(
        s3_endpoint, monkeypatch):
    """The checkpoint repair of ``--resume`` (tuner.study.tune_state.repoint_lost_checkpoints) on S3,
    where a torn save happens: the same torn study as tests/study/test_tune_state.py, kept
    in the bucket. Ray runs in this process, started with the S3 environment its workers
    need."""
    import sys

    import ray
    import ray.cloudpickle

    from tests.study import test_tune_state as torn

    for key, value in s3_env(s3_endpoint).items():
        monkeypatch.setenv(key, value)
    ray.cloudpickle.register_pickle_by_value(sys.modules[torn.__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        path, fs, trial = torn.fit_and_tear(f"s3://{BUCKET}/torn")
        assert trial.startswith(f"{BUCKET}/torn/gap/") and type(fs).__name__ == "S3FileSystem"
        torn.check_repointed_and_resumed(path, fs, trial)
    finally:
        ray.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[torn.__name__])
