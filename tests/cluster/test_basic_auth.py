"""MLflow basic auth (`mlflow server --app-name basic-auth`): the fail-fast server check."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from tests import servers
from tuner.tracking.auth import TrackingServerError, check_tracking_server, redact_uri

pytestmark = pytest.mark.slow


def test_with_credentials_the_check_passes_and_a_run_logs(auth_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", auth_server.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth_server.password)
    check_tracking_server(auth_server.uri)
    client = MlflowClient(auth_server.uri)
    run = client.create_run(client.create_experiment("auth-smoke"))
    client.log_metric(run.info.run_id, "val_acc", 0.5)
    assert client.get_run(run.info.run_id).data.metrics["val_acc"] == 0.5


def test_credentials_file_is_read_like_mlflow_does(auth_server, no_mlflow_credentials, tmp_path):
    (tmp_path / ".mlflow").mkdir()
    (tmp_path / ".mlflow" / "credentials").write_text(
        f"[mlflow]\nmlflow_tracking_username = {auth_server.username}\n"
        f"mlflow_tracking_password = {auth_server.password}\n"
    )
    check_tracking_server(auth_server.uri)


def test_without_credentials_fails_fast_with_the_fix(auth_server, no_mlflow_credentials):
    with pytest.raises(TrackingServerError, match="requires authentication.*MLFLOW_TRACKING_USERNAME"):
        check_tracking_server(auth_server.uri)


def test_wrong_password_is_rejected_without_echoing_it(auth_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", auth_server.username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    with pytest.raises(TrackingServerError, match="rejected the credentials") as info:
        check_tracking_server(auth_server.uri)
    assert "not-the-password" not in str(info.value)


def test_unreachable_server_names_the_uri_without_its_password():
    uri = f"http://user:hunter22@127.0.0.1:{servers.free_port()}"
    with pytest.raises(TrackingServerError, match="unreachable") as info:
        check_tracking_server(uri, timeout_s=2)
    assert "hunter22" not in str(info.value) and "127.0.0.1" in str(info.value)


def test_non_http_uris_name_no_server():
    check_tracking_server("sqlite:////tmp/nowhere/mlflow.db")


def test_redact_uri():
    assert redact_uri("https://u:p@host:5000/x") == "https://host:5000/x"
    assert redact_uri("http://host:5000") == "http://host:5000"
