"""The cluster path as the docs show it: ``ray job submit -- python tuner/run.py --family ...`` on
an autoscaling GPU cluster, with exactly the environment that ``cluster/`` sets on every node and
no resource, storage or tracking flag.

A local multi-node Ray (cluster/local-fake-gpu.yaml: Ray's own autoscaler with the
``fake_multinode`` provider, a head without GPUs and GPU worker nodes it starts on demand), an
``mlflow server`` that serves artifacts (kept in an S3 bucket), and an S3 endpoint (moto) for
Tune's storage, all on 127.0.0.1. The study is submitted from another working directory, killed
mid-way (``ray job stop``) and resumed with ``--resume``. (One concession to fake nodes sharing
one machine: a first job starts the GPU nodes, see ``_start_gpu_nodes_with_the_checkout``; the
driver's conclusion from the autoscaler's node types, before any GPU node exists, is checked
with the same code the driver runs.) It checks that trials asked for GPUs and
ran on GPU worker nodes the autoscaler started, that every checkpoint is in the bucket, and that
every trial's artifacts and the registered model come back through the MLflow server (no local
path in any source); then that the idle GPU nodes are removed.

The cluster costs ~4 GiB and its autoscaler starts and stops Ray processes: run alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests import servers
from tests.cluster.conftest import REPO, aws_node_env, ray_env

pytestmark = [pytest.mark.slow, pytest.mark.alone]
RAY = str(Path(sys.executable).parent / "ray")
STUDIES_BUCKET, ARTIFACTS_BUCKET = "lenstune-studies", "lenstune-artifacts"
# The command docs/cluster.md shows, at micro size: no resource, storage or tracking flag.
SAMPLES = 6
STUDY = ["python", "tuner/run.py", "--family", "vit", "--profile", "micro", "--samples", str(SAMPLES)]


def _session_pids(sid: int) -> list[int]:
    """Processes of session ``sid`` (everything `ray start` spawned, worker nodes included)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
    return pids


def _stop_session(sid: int, timeout_s: float = 30) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _session_pids(sid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while _session_pids(sid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if not _session_pids(sid):
            return


@contextlib.contextmanager
def fake_gpu_cluster(ray_tmp: Path, env: dict[str, str]):
    """Head node of cluster/local-fake-gpu.yaml on free ports, with the job API (dashboard) on
    127.0.0.1; yields (GCS address, dashboard URL). ``env`` is every node's environment."""
    port, dashboard = servers.free_port(), servers.free_port()
    config = yaml.safe_load((REPO / "cluster" / "local-fake-gpu.yaml").read_text())
    config["provider"]["gcs_address"] = f"{servers.LOOPBACK}:{port}"
    config_path = ray_tmp / "autoscaling.yaml"
    config_path.write_text(yaml.safe_dump(config))
    head = config["available_node_types"][config["head_node_type"]]["resources"]
    cmd = [
        RAY, "start", "--head", f"--node-ip-address={servers.LOOPBACK}", f"--port={port}",
        f"--num-cpus={head.get('CPU', 0)}", "--num-gpus=0", f"--autoscaling-config={config_path}",
        "--include-dashboard=true", f"--dashboard-host={servers.LOOPBACK}",
        f"--dashboard-port={dashboard}", f"--ray-client-server-port={servers.free_port()}",
        f"--dashboard-agent-listen-port={servers.free_port()}", "--disable-usage-stats",
    ]
    starter = subprocess.Popen(
        cmd, env={**env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"},
        start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        out, _ = starter.communicate(timeout=180)
        assert starter.returncode == 0, out[-3000:]
        yield f"{servers.LOOPBACK}:{port}", f"http://{servers.LOOPBACK}:{dashboard}"
    finally:
        _stop_session(starter.pid)


def cluster_environment() -> dict[str, str]:
    """Every environment variable that cluster/aws-gpu.yaml (docker run options) and
    cluster/kuberay/raycluster.yaml (container env) set, with the value each config gives
    (None where it comes from a Secret)."""
    names: dict[str, str | None] = dict(aws_node_env())
    kuberay = yaml.safe_load((REPO / "cluster" / "kuberay" / "raycluster.yaml").read_text())
    pods = [kuberay["spec"]["headGroupSpec"]["template"]] + [
        g["template"] for g in kuberay["spec"]["workerGroupSpecs"]]
    for pod in pods:
        for container in pod["spec"]["containers"]:
            for var in container.get("env", []):
                names.setdefault(var["name"], var.get("value"))
    return names


def local_values(config_env: dict[str, str | None], *, mlflow: str, s3: str,
                 optuna: str) -> dict[str, str]:
    """The same variables, pointed at this machine's servers. A variable the configs set that
    this mapping does not know fails the test: a new setting must be tried here too."""
    local = {
        "MLFLOW_TRACKING_URI": mlflow,
        "LENSTUNE_STORAGE": config_env["LENSTUNE_STORAGE"],  # the same bucket and prefix
        # the searchers' Optuna studies in PostgreSQL, in the database the stack's init makes
        "LENSTUNE_OPTUNA_STORAGE": optuna,
        "AWS_ENDPOINT_URL": s3,
        "AWS_ACCESS_KEY_ID": servers.S3_DUMMY_ENV["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": servers.S3_DUMMY_ENV["AWS_SECRET_ACCESS_KEY"],
        "AWS_DEFAULT_REGION": servers.S3_DUMMY_ENV["AWS_DEFAULT_REGION"],
        # The test server has no basic auth; credentials are sent and ignored, as with any user.
        "MLFLOW_TRACKING_USERNAME": "lenstune", "MLFLOW_TRACKING_PASSWORD": "unused",
        "LENSTUNE_MLFLOW_CREDENTIALS_SSM_PREFIX": config_env.get(
            "LENSTUNE_MLFLOW_CREDENTIALS_SSM_PREFIX") or "",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    unknown = sorted(set(config_env) - set(local))
    assert not unknown, f"cluster/ sets {unknown}: give them a local value in this test"
    return {name: local[name] for name in config_env}


def _submit(dashboard: str, env: dict, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``ray job submit`` (retried while the head's job agent is not up: Ray refuses then,
    without starting anything)."""
    for _ in range(12):
        job = subprocess.run([RAY, "job", "submit", "--address", dashboard, *args], cwd=cwd,
                             env=env, capture_output=True, text=True, timeout=timeout)
        if "No available agent to submit job" not in job.stdout + job.stderr:
            return job
        time.sleep(5)
    return job


def _wait_http(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2):
                return
        time.sleep(1)
    raise AssertionError(f"{url} not ready in {timeout_s} s")


def _gpu_worker_nodes(ray) -> set[str]:
    return {n["NodeID"] for n in ray.nodes()
            if n["Alive"] and n["Resources"].get("GPU", 0) > 0
            and "node:__internal_head__" not in n["Resources"]}


def test_cluster_command_trains_on_autoscaled_gpu_nodes_with_shared_storage(tmp_path, ray_tmp,
                                                                            monkeypatch):
    import ray

    with servers.s3_server() as s3, servers.postgres_server() as pg:
        optuna_url = servers.create_optuna_database(pg, REPO)
        for bucket in (STUDIES_BUCKET, ARTIFACTS_BUCKET):
            servers.create_bucket(s3, bucket)
        server_env = {**servers.S3_DUMMY_ENV, "MLFLOW_S3_ENDPOINT_URL": s3}
        with servers.mlflow_server(f"sqlite:///{tmp_path / 'mlflow.db'}",
                                   artifacts_destination=f"s3://{ARTIFACTS_BUCKET}/",
                                   env=server_env) as mlflow:
            config_env = cluster_environment()
            # `python` on every node is the one lenstune is installed in, as in the worker image.
            node_env = ray_env(tmp_path, ray_tmp,
                               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                               **local_values(config_env, mlflow=mlflow.uri, s3=s3,
                                              optuna=optuna_url))
            for key in ("MLFLOW_TRACKING_URI", "LENSTUNE_STORAGE", "AWS_ENDPOINT_URL"):
                assert key in config_env, f"cluster/ no longer sets {key}"
            # The submitting user's shell: Ray's own settings only, in another folder.
            user_env = {k: v for k, v in node_env.items()
                        if k not in config_env and not k.startswith(("MLFLOW_", "LENSTUNE_", "AWS_"))}
            user_dir = tmp_path / "elsewhere"
            user_dir.mkdir()
            with fake_gpu_cluster(ray_tmp, node_env) as (address, dashboard):
                _wait_http(dashboard + "/api/jobs/")
                for key in ("RAY_TMPDIR", "RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED"):
                    monkeypatch.setenv(key, node_env[key])
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
                try:
                    _run_kill_resume_and_check(ray, dashboard, user_env, user_dir, mlflow.uri, s3,
                                               config_env["LENSTUNE_STORAGE"], tmp_path)
                    import optuna

                    # the searchers kept their studies in PostgreSQL, not on the head's disk
                    assert optuna.get_all_study_names(optuna_url), "no Optuna study in PostgreSQL"
                except BaseException:
                    # Ray's own logs (autoscaler, runtime env agents) for a post-mortem.
                    import shutil

                    for log in ray_tmp.glob("ray/session_*/logs/*"):
                        if log.is_file() and log.name.startswith(("runtime_env", "monitor", "raylet")):
                            shutil.copy(log, tmp_path / log.name)
                    raise
                    # Idle GPU nodes go away after idle_timeout_minutes plus a few rounds.
                    deadline = time.monotonic() + 240
                    while _gpu_worker_nodes(ray) and time.monotonic() < deadline:
                        time.sleep(1)
                    assert not _gpu_worker_nodes(ray), "idle GPU nodes were not removed"
                finally:
                    ray.shutdown()


# A job that makes the autoscaler start both fake GPU nodes, whose runtime-env agents then unpack
# the checkout (see _start_gpu_nodes_with_the_checkout).
WARM_UP = ("cd / && python -c 'import ray; ray.init(); "
           "f = ray.remote(num_cpus=1, num_gpus=1)(lambda: 1); ray.get([f.remote(), f.remote()])'")


def _start_gpu_nodes_with_the_checkout(dashboard, user_env, user_dir) -> None:
    """Fake nodes share this machine's Ray session folder, and a node's runtime-env agent that
    has not unpacked a job's working directory yet replaces the folder it finds there (on a real
    cluster each node has its own disk): a study's driver running in that folder would lose its
    working directory mid-run. So the GPU nodes are started, and the checkout unpacked on them,
    by a job before the study's."""
    job = _submit(dashboard, user_env, user_dir, "--working-dir", str(REPO), "--",
                  "sh", "-c", WARM_UP, timeout=300)
    assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]


def _run_kill_resume_and_check(ray, dashboard, user_env, user_dir, mlflow_uri, s3, storage,
                               tmp_path) -> None:
    assert not _gpu_worker_nodes(ray), "the cluster must start without GPU workers"
    # What the driver concludes before any GPU node exists: GPU trials, from the node types of
    # the autoscaler's config (the driver below runs the same code on the head node).
    from tuner.study.resources import inspect_cluster, resolve_resources

    view = inspect_cluster()
    assert view.gpus_now == 0 and view.can_start_gpus, view
    planned = resolve_resources(view, cpus=1, gpus="auto", max_concurrent="auto", profile="micro")
    assert (planned.gpus, planned.max_concurrent) == (0.25, 2), planned
    _start_gpu_nodes_with_the_checkout(dashboard, user_env, user_dir)
    seen_gpu_nodes: set[str] = _gpu_worker_nodes(ray)
    assert len(seen_gpu_nodes) == 2, "the autoscaler did not start the GPU nodes"
    bucket, prefix = storage[len("s3://"):].split("/", 1)

    # 1. Submit without waiting; stop the job once a trial has a checkpoint in the bucket.
    first = _submit(dashboard, user_env, user_dir, "--no-wait", "--working-dir", str(REPO),
                    "--", *STUDY)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    job_id = re.search(r"raysubmit_\w+", first.stdout).group(0)
    from ray.job_submission import JobStatus, JobSubmissionClient

    jobs = JobSubmissionClient(dashboard)  # the job API, as the CLI uses it, polled quickly
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline:
        seen_gpu_nodes |= _gpu_worker_nodes(ray)
        if any("/checkpoint_" in k for k in servers.list_objects(s3, bucket)):
            break
        status = jobs.get_job_status(job_id)
        assert status in (JobStatus.PENDING, JobStatus.RUNNING), jobs.get_job_logs(job_id)[-5000:]
        time.sleep(0.2)
    else:
        raise AssertionError("no checkpoint reached the bucket:\n" + jobs.get_job_logs(job_id)[-5000:])
    stop = subprocess.run([RAY, "job", "stop", "--address", dashboard, job_id], env=user_env,
                          capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    deadline = time.monotonic() + 60
    while jobs.get_job_status(job_id) != JobStatus.STOPPED and time.monotonic() < deadline:
        time.sleep(0.5)
    first_log = jobs.get_job_logs(job_id)
    (tmp_path / "first.log").write_text(first_log)
    assert jobs.get_job_status(job_id) == JobStatus.STOPPED, first_log[-3000:]
    assert "gpus_per_trial auto -> 0.25" in first_log, first_log[-3000:]

    # 2. The same command with --resume finishes the study and promotes its best trial.
    resumed = subprocess.Popen(
        [RAY, "job", "submit", "--address", dashboard, "--working-dir", str(REPO), "--",
         *STUDY, "--resume"], cwd=user_dir, env=user_env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while resumed.poll() is None and time.monotonic() < deadline:
        seen_gpu_nodes |= _gpu_worker_nodes(ray)
        time.sleep(1)
    if resumed.poll() is None:
        resumed.kill()
    out = resumed.communicate()[0]
    (tmp_path / "resumed.log").write_text(out)
    assert resumed.returncode == 0 and "succeeded" in out.lower(), out[-5000:]
    restored = re.search(r"Trial status: ([^\n]*)", out).group(1)
    assert restored != f"{SAMPLES} TERMINATED", "the job was stopped after its last trial"
    assert seen_gpu_nodes, "the autoscaler never added a GPU worker node"

    # 3. What the study left, read back through the tracking server only.
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("lenstune")
    assert experiment.artifact_location.startswith("mlflow-artifacts:"), experiment.artifact_location
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    studies = [r for r in runs if r.data.tags.get("lenstune.kind") == "study"]
    trials = [r for r in runs if r.data.tags.get("lenstune.kind") == "trial"]
    assert len(studies) == 1 and studies[0].info.status == "FINISHED"
    study = studies[0]
    assert len(trials) == SAMPLES, [t.data.tags.get("trial_id") for t in trials]
    assert study.data.params["resources.vit.gpus_per_trial"] == "0.25"
    assert study.data.params["storage_resolved"] == storage
    keys = servers.list_objects(s3, bucket)
    study_name = study.data.tags["lenstune.study"]
    for trial in trials:
        tags = trial.data.tags
        assert tags["stop_reason"] in ("completed", "asha_stopped"), tags
        assert "GPU=0.25" in tags["lenstune.assigned_resources"], tags
        assert tags["lenstune.node_id"] in seen_gpu_nodes, (tags["lenstune.node_id"], seen_gpu_nodes)
        assert trial.info.artifact_uri.startswith("mlflow-artifacts:"), trial.info.artifact_uri
        local = client.download_artifacts(trial.info.run_id, "roc_curves.png", str(tmp_path / "dl"))
        assert Path(local).stat().st_size > 0
        weights = client.download_artifacts(trial.info.run_id, "checkpoint/model.safetensors",
                                            str(tmp_path / "dl" / trial.info.run_id))
        assert Path(weights).stat().st_size > 0
        folder = f"{prefix}/{study_name}/vit/train_trial_{tags['trial_id']}/"
        assert any(k.startswith(folder + "checkpoint_") for k in keys), (folder, keys[:20])

    # The registered champion: its source is on the server, and it downloads from there.
    versions = client.search_model_versions("name = 'lenstune-model_ii'")
    assert versions, "no model registered"
    for version in versions:
        assert version.source.startswith(("mlflow-artifacts:", "models:/")), version.source
    champion = client.get_model_version_by_alias("lenstune-model_ii", "champion")
    import mlflow

    mlflow.set_tracking_uri(mlflow_uri)
    model_dir = mlflow.artifacts.download_artifacts(
        f"models:/lenstune-model_ii/{champion.version}", dst_path=str(tmp_path / "model"))
    files = {p.name for p in Path(model_dir).rglob("*") if p.is_file()}
    assert "model.safetensors" in files, files
    stored = servers.list_objects(s3, ARTIFACTS_BUCKET)
    assert any(k.endswith("model.safetensors") for k in stored)
