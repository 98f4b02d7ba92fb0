"""cluster/fetch_mlflow_credentials.py against a mocked SSM Parameter Store (moto)."""

from __future__ import annotations

import configparser
import importlib.util
import stat
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

SCRIPT = Path(__file__).resolve().parents[2] / "cluster" / "fetch_mlflow_credentials.py"


@pytest.fixture()
def fetch(monkeypatch):
    # Dummy values: moto never talks to AWS, but boto3 wants a region and some credentials.
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-west-2",
    }.items():
        monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location("fetch_mlflow_credentials", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@mock_aws
def test_writes_mlflow_credentials_file_readable_by_owner_only(fetch, tmp_path):
    ssm = boto3.client("ssm")
    ssm.put_parameter(Name="/team/mlflow/username", Value="alice", Type="SecureString")
    ssm.put_parameter(Name="/team/mlflow/password", Value="correct-horse", Type="SecureString")
    out = tmp_path / "home" / ".mlflow" / "credentials"
    assert fetch.main(["--prefix", "/team/mlflow/", "--output", str(out)]) == 0
    config = configparser.ConfigParser()
    config.read(out)
    # The keys MLflow's client reads from ~/.mlflow/credentials.
    assert dict(config["mlflow"]) == {
        "mlflow_tracking_username": "alice",
        "mlflow_tracking_password": "correct-horse",
    }
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


@mock_aws
def test_missing_parameter_names_it(fetch, tmp_path):
    out = tmp_path / "credentials"
    with pytest.raises(SystemExit, match="/nowhere/username"):
        fetch.main(["--prefix", "/nowhere", "--output", str(out)])
    assert not out.exists()


def test_no_prefix_writes_nothing(fetch, tmp_path, monkeypatch):
    monkeypatch.delenv(fetch.PREFIX_ENV, raising=False)
    out = tmp_path / "credentials"
    assert fetch.main(["--output", str(out)]) == 0
    assert not out.exists()
