"""The one progress bar of lenstune's long steps (tqdm on stderr).

A bar shows when the ``tuner`` loggers show INFO, that is when a command runs without
``--quiet`` (:func:`tuner.cli.command.setup_logging`), and stderr is a terminal (a log file or
a CI job gets the commands' messages, not a stream of bar redraws); ``LENSTUNE_PROGRESS=1``
shows bars anyway, ``LENSTUNE_PROGRESS=0`` never. Library code called on its own (tests,
notebooks without logging set up) stays silent.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable

from tqdm import tqdm

PROGRESS_ENV = "LENSTUNE_PROGRESS"


def progress_shown() -> bool:
    """Whether progress bars show (see the module docstring)."""
    forced = os.environ.get(PROGRESS_ENV, "").lower()
    if forced in ("0", "false", "no"):
        return False
    if not logging.getLogger("tuner").isEnabledFor(logging.INFO):
        return False
    return forced in ("1", "true", "yes") or sys.stderr.isatty()


def progress(iterable: Iterable | None = None, *, desc: str, total: int | None = None,
             unit: str = "it", leave: bool = True, enabled: bool | None = None) -> tqdm:
    """A tqdm bar on stderr over ``iterable`` (or one to ``update`` by hand when None), labelled
    ``desc``; shown when ``enabled``, or when None, when :func:`progress_shown`."""
    shown = progress_shown() if enabled is None else enabled
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, disable=not shown,
                dynamic_ncols=True, file=sys.stderr)
