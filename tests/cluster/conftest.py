"""Fixtures: the production tracking stack (PostgreSQL + S3 on moto + MLflow server) and an
MLflow server with basic auth, all on 127.0.0.1, started and stopped by the tests."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests import servers

ARTIFACT_BUCKET = "lenstune-artifacts"
REPO = Path(__file__).resolve().parents[2]


def aws_node_env() -> dict[str, str]:
    """The environment variables that cluster/aws-gpu.yaml sets on every node (its docker run
    options ``--env NAME=value``), with the values it gives."""
    config = yaml.safe_load((REPO / "cluster" / "aws-gpu.yaml").read_text())
    found = (re.fullmatch(r"--env (\w+)=(.*)", o.strip()) for o in config["docker"]["run_options"])
    return {m.group(1): m.group(2) for m in found if m}


@dataclass(frozen=True)
class TrackingStack:
    """Where a study logs (``tracking_uri``) and where the server keeps things."""

    tracking_uri: str
    postgres_uri: str
    s3_endpoint: str
    bucket: str


# One stack per session: starting it costs ~10 s; tests keep apart by experiment names.
@pytest.fixture(scope="session")
def tracking_stack() -> TrackingStack:
    if servers.postgres_bin_dir() is None:
        pytest.skip("PostgreSQL server binaries missing; run .ci/system-deps")
    with servers.postgres_server() as pg, servers.s3_server() as s3:
        servers.create_bucket(s3, ARTIFACT_BUCKET)
        env = {**servers.S3_DUMMY_ENV, "MLFLOW_S3_ENDPOINT_URL": s3}
        with servers.mlflow_server(
            pg.sqlalchemy_uri, artifacts_destination=f"s3://{ARTIFACT_BUCKET}/", env=env
        ) as mlflow:
            yield TrackingStack(mlflow.uri, pg.uri, s3, ARTIFACT_BUCKET)


@dataclass(frozen=True)
class AuthServer:
    uri: str
    username: str
    password: str


@pytest.fixture(scope="session")
def auth_server() -> AuthServer:
    """``mlflow server --app-name basic-auth`` with a fresh admin user and a random password."""
    folder = Path(tempfile.mkdtemp(prefix="lt-auth-", dir="/tmp"))
    username, password = "lenstune-admin", secrets.token_urlsafe(16)
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(servers.write_basic_auth_config(folder, username)),
        "MLFLOW_AUTH_ADMIN_USERNAME": username,
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        # Signs the auth app's CSRF tokens; MLflow refuses to start basic auth without one.
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    }
    backend = f"sqlite:///{folder / 'mlflow.db'}"
    try:
        with servers.mlflow_server(
            backend, artifacts_destination=str(folder / "artifacts"), env=env, app_name="basic-auth"
        ) as mlflow:
            yield AuthServer(mlflow.uri, username, password)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture()
def no_mlflow_credentials(monkeypatch, tmp_path):
    """No MLflow credentials from the environment or from ~/.mlflow/credentials."""
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))


@pytest.fixture(scope="session")
def micro_dataset(tmp_path_factory) -> Path:
    """A tiny simulated model_ii store (32 px) shared by the study tests of this folder."""
    from tuner.data import ensure_simulated

    root = tmp_path_factory.mktemp("cluster-data") / "model_ii-32px"
    return ensure_simulated(root, "model_ii", 30, seed=0, img_size=32)


def study_command(tracking_uri: str, experiment: str, data: Path, runs_dir: Path, *extra: str) -> list[str]:
    """The same study command as on a laptop or a cluster, at micro size (2 trials, 1 epoch)."""
    return [
        sys.executable, str(REPO / "tuner" / "run.py"), "--family", "vit", "--profile", "micro",
        "--data", str(data), "--samples", "2", "--max-epochs", "1", "--cpus-per-trial", "1",
        "--tracking-uri", tracking_uri, "--experiment", experiment, "--runs-dir", str(runs_dir),
        *extra,
    ]


@pytest.fixture()
def ray_tmp() -> Path:
    """A short private RAY_TMPDIR (Ray's socket paths must stay under ~107 characters)."""
    path = Path(tempfile.mkdtemp(prefix="lt-ray-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def ray_env(tmp_root: Path, ray_tmp: Path, **extra: str) -> dict[str, str]:
    """Environment for a process that starts or joins Ray: no usage stats, no token auth,
    a short private temp dir, no inherited MLflow credentials unless given in ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "RAY_ADDRESS")}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", RAY_TMPDIR=str(ray_tmp),
               HOME=str(tmp_root), PYTHONPATH=str(REPO))
    env.update(extra)
    return env
