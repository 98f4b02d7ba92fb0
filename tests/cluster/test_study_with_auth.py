"""A study against an MLflow server with basic auth: logs with credentials, fails fast without,
and no credential ends up in any param, tag or artifact."""

from __future__ import annotations

import base64
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.cluster.conftest import ray_env, study_command

pytestmark = pytest.mark.slow


def test_without_credentials_the_study_fails_fast(auth_server, micro_dataset, tmp_path, ray_tmp):
    cmd = study_command(auth_server.uri, "auth-study-refused", micro_dataset, tmp_path / "runs")
    start = time.monotonic()
    result = subprocess.run(cmd, env=ray_env(tmp_path, ray_tmp), capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert "MLFLOW_TRACKING_USERNAME" in result.stderr and "Traceback" not in result.stderr, result.stderr[-3000:]
    # Refused before Ray starts or anything is written.
    assert elapsed < 60, f"took {elapsed:.0f} s"
    assert not (ray_tmp / "ray").exists()


def test_with_credentials_the_study_logs_and_no_credential_leaks(
    auth_server, micro_dataset, tmp_path, ray_tmp, monkeypatch
):
    env = ray_env(tmp_path, ray_tmp, MLFLOW_TRACKING_USERNAME=auth_server.username,
                  MLFLOW_TRACKING_PASSWORD=auth_server.password)
    cmd = study_command(auth_server.uri, "auth-study", micro_dataset, tmp_path / "runs")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    secrets = [auth_server.password,
               base64.b64encode(f"{auth_server.username}:{auth_server.password}".encode()).decode()]
    assert not any(s in result.stdout + result.stderr for s in secrets)

    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", auth_server.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth_server.password)
    client = MlflowClient(auth_server.uri)
    experiment = client.get_experiment_by_name("auth-study")
    runs = client.search_runs([experiment.experiment_id])
    assert sum(r.data.tags.get("lenstune.kind") == "trial" for r in runs) == 2
    scanned = 0
    for run in runs:
        fields = {**run.data.params, **run.data.tags}
        for key, value in fields.items():
            assert not any(s in f"{key}={value}" for s in secrets), f"credential in {key} of run {run.info.run_id}"
        local = Path(mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, dst_path=str(tmp_path / run.info.run_id), tracking_uri=auth_server.uri))
        for path in (p for p in local.rglob("*") if p.is_file()):
            data = path.read_bytes()
            assert not any(s.encode() in data for s in secrets), f"credential in artifact {path.relative_to(local)}"
            scanned += 1
    assert scanned >= 4, "expected checkpoints and configs to scan"
