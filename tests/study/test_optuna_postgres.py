"""The searchers' Optuna studies in the tracking stack's PostgreSQL: the database that
``docker/postgres-init-optuna.sh`` makes, named to the study by ``LENSTUNE_OPTUNA_STORAGE``
(what ``cluster/aws-gpu.yaml`` sets, the password then in ~/.pgpass; and what
``cluster/kuberay/raycluster.yaml`` sets from its Secret, the password in the URL)."""

from __future__ import annotations

import pytest

from tests import servers
from tests.study.studies import REPO, run_args, run_study_process, trial_runs


def test_the_optuna_storage_is_the_flag_else_the_environment_else_the_runs_folder(
        monkeypatch, tmp_path):
    from tuner.study.config import StudyConfig

    monkeypatch.delenv("LENSTUNE_OPTUNA_STORAGE", raising=False)
    assert StudyConfig(runs_dir=tmp_path).resolved_optuna_storage() == (
        f"sqlite:///{tmp_path / 'optuna.db'}")
    monkeypatch.setenv("LENSTUNE_OPTUNA_STORAGE", "postgresql://optuna@db/optuna")
    assert StudyConfig(runs_dir=tmp_path).resolved_optuna_storage() == "postgresql://optuna@db/optuna"
    assert StudyConfig(runs_dir=tmp_path, optuna_storage="sqlite:///x.db").resolved_optuna_storage() == (
        "sqlite:///x.db")


@pytest.mark.slow
def test_the_aws_head_reaches_its_optuna_database_with_the_password_from_ssm(
        micro_dataset, tmp_path, monkeypatch):
    """cluster/aws-gpu.yaml's storage URL (no password, TLS required) against a PostgreSQL that
    checks passwords and takes TLS: the study fails clearly until the head's setup command
    (``fetch_secrets.py pgpass``) has written ~/.pgpass from SSM, then keeps its study there."""
    if servers.postgres_bin_dir() is None:
        pytest.skip("PostgreSQL server binaries missing; run .ci/system-deps")
    import importlib.util
    import re
    from urllib.parse import urlsplit

    import boto3
    import optuna
    import yaml
    from moto import mock_aws

    from tests.cluster.conftest import aws_node_env

    config = yaml.safe_load((REPO / "cluster" / "aws-gpu.yaml").read_text())
    aws_url = aws_node_env()["LENSTUNE_OPTUNA_STORAGE"]
    head_setup = " ".join(config["head_setup_commands"])
    parameter = re.search(r"fetch_secrets\.py pgpass --parameter (\S+)", head_setup).group(1)
    spec = importlib.util.spec_from_file_location("fetch_secrets", REPO / "cluster" / "fetch_secrets.py")
    fetch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetch)
    home = tmp_path / "home"
    home.mkdir()
    with servers.postgres_server(password="superuser-pw", ssl=True) as pg:
        servers.create_optuna_database(pg, REPO, password="optuna-pw-from-ssm")
        host = urlsplit(aws_url).netloc.split("@")[1]
        url = aws_url.replace(host, f"{servers.LOOPBACK}:{pg.port}")  # this machine's server
        runs = tmp_path / "runs"
        args = run_args(micro_dataset, runs, "scratch", samples=2,
                        extra=("--study-name", "aws", "--no-promote"))
        refused = run_study_process(args, LENSTUNE_OPTUNA_STORAGE=url, HOME=str(home))
        assert refused.returncode != 0
        assert "the Optuna storage postgresql+psycopg2://optuna@" in refused.stderr
        assert "cannot be opened" in refused.stderr and "password" in refused.stderr

        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-west-2", "HOME": str(home),
                           "LENSTUNE_OPTUNA_STORAGE": url}.items():
            monkeypatch.setenv(key, value)
        with mock_aws():
            boto3.client("ssm").put_parameter(Name=parameter, Value="optuna-pw-from-ssm",
                                              Type="SecureString")
            assert fetch.main(["pgpass", "--parameter", parameter]) == 0  # as the head runs it
        assert (home / ".pgpass").is_file()
        proc = run_study_process(args, LENSTUNE_OPTUNA_STORAGE=url, HOME=str(home))
        assert proc.returncode == 0, proc.stderr[-3000:]
        study = optuna.load_study(study_name="aws/scratch", storage=url)
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
        assert not (runs / "optuna.db").exists()  # nothing on the driver's disk
        studies, trials = trial_runs(f"sqlite:///{runs / 'mlflow.db'}")
        assert studies[0].data.params["optuna_storage_resolved"] == url
        assert {t.user_attrs["ray_trial_id"] for t in study.trials} == {
            r.data.tags["trial_id"] for r in trials}
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.pgpass
        with pytest.raises(Exception, match="password"):  # the server does check passwords
            optuna.storages.RDBStorage(url)
        # KubeRay's Secret holds the URL with its password: the same database and study.
        inline = url.replace("optuna@", "optuna:optuna-pw-from-ssm@", 1)
        assert len(optuna.load_study(study_name="aws/scratch", storage=inline).trials) == 2
