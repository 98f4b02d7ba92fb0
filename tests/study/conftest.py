"""Fixtures of the study tests: a micro dataset simulated once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def micro_dataset(tmp_path_factory):
    """A simulated 32 px Model II dataset (60 train images per class), made once per session."""
    from tuner.data import ensure_simulated

    return ensure_simulated(tmp_path_factory.mktemp("data") / "micro", "model_ii", 60, seed=0,
                            img_size=32)
