"""Which MLflow store a command opens, and the one client factory (:func:`mlflow_client`).

Light on purpose: no MLflow import, so a command can settle its store before loading MLflow.
"""

from __future__ import annotations

from pathlib import Path


def default_tracking_uri() -> str:
    """The store ``lenstune tune`` logs to when given none: ``$MLFLOW_TRACKING_URI`` if set,
    else the embedded ``sqlite:///<runs_dir>/mlflow.db`` of the default study config
    (``tuner/study/defaults.yaml``), resolved against the working directory."""
    from tuner.study.config import resolve_study_config

    return resolve_study_config({}).resolved_tracking_uri()


def check_tracking_store(uri: str) -> None:
    """Refuse a sqlite URI whose database file does not exist (MLflow would create an empty one)."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise FileNotFoundError(
            f"no MLflow database at {uri[len('sqlite:///'):]}; pass --tracking-uri "
            f"(or set MLFLOW_TRACKING_URI) to the store the study logged to"
        )


def mlflow_client(tracking_uri: str | None):
    """The one MLflow client factory: tracking and registry client of one store
    (``tracking_uri`` is both; None = MLflow's default, ``$MLFLOW_TRACKING_URI``)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
