"""The one progress bar of lenstune's long steps (tqdm on stderr).

A bar shows when the ``tuner`` loggers show INFO, that is when a command runs without
``--quiet`` (:func:`tuner.cli.command.setup_logging`); library code called on its own (tests,
notebooks without logging set up) stays silent.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from tqdm import tqdm


def progress_shown() -> bool:
    """Whether progress bars show: the ``tuner`` loggers are at INFO or below."""
    return logging.getLogger("tuner").isEnabledFor(logging.INFO)


def progress(iterable: Iterable | None = None, *, desc: str, total: int | None = None,
             unit: str = "it", leave: bool = True, enabled: bool | None = None) -> tqdm:
    """A tqdm bar on stderr over ``iterable`` (or one to ``update`` by hand when None), labelled
    ``desc``; shown when ``enabled``, or when None, when :func:`progress_shown`."""
    shown = progress_shown() if enabled is None else enabled
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, disable=not shown,
                dynamic_ncols=True, file=sys.stderr)
