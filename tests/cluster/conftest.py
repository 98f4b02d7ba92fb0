"""Fixtures: the production tracking stack (PostgreSQL + S3 on moto + MLflow server) and an
MLflow server with basic auth, all on 127.0.0.1, started and stopped by the tests."""

from __future__ import annotations

import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import servers

ARTIFACT_BUCKET = "lenstune-artifacts"


@dataclass(frozen=True)
class TrackingStack:
    """Where a study logs (``tracking_uri``) and where the server keeps things."""

    tracking_uri: str
    postgres_uri: str
    s3_endpoint: str
    bucket: str


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
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
    with servers.mlflow_server(
        backend, artifacts_destination=str(folder / "artifacts"), env=env, app_name="basic-auth"
    ) as mlflow:
        yield AuthServer(mlflow.uri, username, password)
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture()
def no_mlflow_credentials(monkeypatch, tmp_path):
    """No MLflow credentials from the environment or from ~/.mlflow/credentials."""
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
