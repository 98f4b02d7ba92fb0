"""Suite-wide settings. Subsystem fixtures live in each test folder's own conftest.py."""

import os

import pytest

# Ray and MLflow must never phone home or touch the user's home directory from tests.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Tests that need a tracking server pass its URI explicitly; a developer's own server must
# never receive test runs.
os.environ.pop("MLFLOW_TRACKING_URI", None)
# Trials checkpoint every epoch by design; Ray would warn about sync frequency each time.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


@pytest.fixture(autouse=True)
def _restore_tuner_logging():
    """A command run in-process sets up the ``tuner`` loggers (tuner.cli.command); put them
    back so later tests see library code as it is without a command (no progress bars)."""
    import logging

    logger = logging.getLogger("tuner")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


@pytest.fixture(scope="session")
def sqlite_uri(tmp_path_factory) -> str:
    """One embedded MLflow store for the session (creating one costs seconds of migrations);
    tests keep apart by using their own experiment names."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
