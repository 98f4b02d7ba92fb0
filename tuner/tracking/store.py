"""Which MLflow store a command opens, and the one client factory (:func:`mlflow_client`).

Light on purpose: no MLflow import, so a command can settle its store before loading MLflow.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
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
    (``tracking_uri`` is both; None = MLflow's default, ``$MLFLOW_TRACKING_URI``). A new
    embedded sqlite store is created here, under :func:`store_lock`: MLflow creates its tables
    on first use, and two processes doing that at once fail (``table ... already exists``)."""
    from mlflow import MlflowClient

    if tracking_uri and tracking_uri.startswith("sqlite:///"):
        _create_sqlite_store(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _sqlite_path(uri: str) -> Path:
    return Path(uri[len("sqlite:///"):])


def _create_sqlite_store(uri: str) -> None:
    """Create the tables of the embedded store at ``uri`` unless another process has."""
    path = _sqlite_path(uri)
    ready = path.with_name(path.name + ".ready")  # written once the tables exist
    if ready.exists() and path.exists():
        return
    if path.exists() and not os.access(path.parent, os.W_OK):
        return  # an existing store in a folder this process may only read: nothing to create
    with store_lock(uri):
        if ready.exists() and path.exists():
            return
        from mlflow.store.model_registry.sqlalchemy_store import (
            SqlAlchemyStore as RegistryStore,
        )
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        SqlAlchemyStore(uri, str(path.parent / "mlartifacts"))
        RegistryStore(uri)
        ready.write_text("")


@contextlib.contextmanager
def store_lock(uri: str | None) -> Iterator[None]:
    """Held while one process does what must not run twice at once against the store at
    ``uri`` (create the embedded store, register a model): a file lock beside an embedded
    sqlite database, which serialises the processes of this machine. Other stores (a tracking
    server, PostgreSQL) get no lock here; their writers check afterwards instead."""
    if not (uri and uri.startswith("sqlite:///")):
        yield
        return
    path = _sqlite_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
