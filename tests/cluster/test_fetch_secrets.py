"""cluster/fetch_secrets.py against a mocked SSM Parameter Store (moto): each subcommand writes
the file its client reads, owner-only, and names what is missing."""

from __future__ import annotations

import configparser
import importlib.util
import stat
from pathlib import Path

import boto3
import pytest
import yaml
from moto import mock_aws

from tests.cluster.conftest import aws_node_env

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"
URL = "postgresql+psycopg2://optuna@db.internal:6543/optuna?sslmode=require"


@pytest.fixture()
def fetch(monkeypatch):
    # Dummy values: moto never talks to AWS, but boto3 wants a region and some credentials.
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-west-2"}.items():
        monkeypatch.setenv(key, value)
    spec = importlib.util.spec_from_file_location("fetch_secrets", CLUSTER / "fetch_secrets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _owner_only(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


@mock_aws
def test_mlflow_credentials_are_written_where_mlflow_reads_them(fetch, tmp_path):
    ssm = boto3.client("ssm")
    ssm.put_parameter(Name="/team/mlflow/username", Value="alice", Type="SecureString")
    ssm.put_parameter(Name="/team/mlflow/password", Value="correct-horse", Type="SecureString")
    out = tmp_path / "home" / ".mlflow" / "credentials"
    assert fetch.main(["mlflow-credentials", "--prefix", "/team/mlflow/", "--output", str(out)]) == 0
    config = configparser.ConfigParser()
    config.read(out)
    # The keys MLflow's client reads from ~/.mlflow/credentials.
    assert dict(config["mlflow"]) == {"mlflow_tracking_username": "alice",
                                      "mlflow_tracking_password": "correct-horse"}
    assert _owner_only(out)
    with pytest.raises(SystemExit, match="/nowhere/username"):
        fetch.main(["mlflow-credentials", "--prefix", "/nowhere", "--output", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_no_mlflow_prefix_writes_nothing(fetch, tmp_path, monkeypatch):
    monkeypatch.delenv(fetch.MLFLOW_PREFIX_ENV, raising=False)
    out = tmp_path / "credentials"
    assert fetch.main(["mlflow-credentials", "--output", str(out)]) == 0
    assert not out.exists()


def test_the_ray_token_is_written_owner_only(fetch, tmp_path):
    # The parameter the AWS config reads is the subcommand's default.
    setup = " ".join(yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())["setup_commands"])
    assert f"ray-token --parameter {fetch.DEFAULT_RAY_TOKEN_PARAMETER}" in setup
    out = tmp_path / "home" / ".ray" / "auth_token"
    with mock_aws():
        ssm = boto3.client("ssm")
        ssm.put_parameter(Name="/team/ray/auth_token", Value="0123abcd" * 8 + "\n", Type="SecureString")
        ssm.put_parameter(Name="/team/ray/blank", Value=" ", Type="SecureString")
        assert fetch.main(["ray-token", "--parameter", "/team/ray/auth_token", "--output", str(out)]) == 0
        with pytest.raises(SystemExit, match="not found"):
            fetch.main(["ray-token", "--parameter", "/team/ray/missing", "--output", str(tmp_path / "other")])
        with pytest.raises(SystemExit, match="'/team/ray/blank' is empty"):
            fetch.main(["ray-token", "--parameter", "/team/ray/blank", "--output", str(tmp_path / "other")])
    assert out.read_text() == "0123abcd" * 8
    assert _owner_only(out)
    assert not (tmp_path / "other").exists()


def test_pgpass_gets_the_line_libpq_matches_and_keeps_the_others(fetch, tmp_path):
    out = tmp_path / ".pgpass"
    out.write_text("other.host:5432:*:bob:pw1\ndb.internal:6543:optuna:optuna:old\n")
    with mock_aws():
        boto3.client("ssm").put_parameter(Name="/lenstune/optuna/password", Value="s3cr:t\\x",
                                          Type="SecureString")
        assert fetch.main(["pgpass", "--url", URL, "--output", str(out)]) == 0
    # host:port:database:user:password, with ':' and '\' escaped (libpq's format).
    assert out.read_text().splitlines() == ["other.host:5432:*:bob:pw1",
                                            "db.internal:6543:optuna:optuna:s3cr\\:t\\\\x"]
    assert _owner_only(out)


@pytest.mark.parametrize("url", [None, "sqlite:////runs/optuna.db",
                                 "postgresql://optuna:inline@db/optuna"])
def test_pgpass_writes_nothing_for_storage_that_needs_none(fetch, tmp_path, monkeypatch, url):
    monkeypatch.delenv(fetch.OPTUNA_STORAGE_ENV, raising=False)
    out = tmp_path / ".pgpass"
    assert fetch.main(["pgpass", *(["--url", url] if url else []), "--output", str(out)]) == 0
    assert not out.exists()


def test_pgpass_refuses_a_url_without_user(fetch, tmp_path):
    with pytest.raises(SystemExit, match="names no user or host"):
        fetch.main(["pgpass", "--url", "postgresql://db.internal/optuna", "--output", str(tmp_path / "p")])
    assert not (tmp_path / "p").exists()


def test_pgpass_reads_the_url_the_aws_config_sets(fetch):
    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    url = aws_node_env()[fetch.OPTUNA_STORAGE_ENV]
    assert fetch.pgpass_fields(url) == ("optuna-db.lenstune.internal", "5432", "optuna", "optuna")
    assert "sslmode=require" in url  # the password crosses the network: TLS only
    head = " ".join(config["head_setup_commands"])
    assert f"fetch_secrets.py pgpass --parameter {fetch.DEFAULT_OPTUNA_PASSWORD_PARAMETER}" in head
