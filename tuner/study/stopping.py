"""Study-level stopping: end a family's search before its samples are used up.

- ``plateau``: the family's best objective has not improved in the last N trials to end
  (a trial's score is the best its objective reached; a failed trial counts as no improvement);
- ``budget_device_hours``: the trials' device time, summed over every epoch they reported
  (an epoch's seconds times the trial's GPU share, or its CPUs on a CPU-only study), reached the
  budget (``--budget-gpu-hours``);
- ``time_budget_s``: the family's wall-clock seconds since its search started.

:class:`StudyStopper` is a Ray Tune stopper: Tune asks it after every result whether to stop
the experiment, and then stops the trials still running. The driver's trial callback asks it
why (``reason``/``message``) to name those trials' stop, tells it each trial's end, and the
driver records the reason on the study run.
"""

from __future__ import annotations

import math
import time

from ray import tune

from tuner.tracking import schema


class StudyStopper(tune.Stopper):
    def __init__(self, metric: str, *, plateau: int | None = None,
                 budget_device_hours: float | None = None, device_share: float = 1.0,
                 device_unit: str = "GPU", time_budget_s: float | None = None):
        if plateau is not None and plateau < 1:
            raise ValueError(f"plateau must be >= 1 trials, got {plateau}")
        self.metric = metric
        self.plateau = plateau
        self.budget_device_hours = budget_device_hours
        self.device_share = device_share
        self.device_unit = device_unit
        self.time_budget_s = time_budget_s
        self.device_seconds = 0.0
        self.best = -math.inf  # best score of the trials that ended
        self.since_best = 0  # trials that ended since the best improved
        self.ended: set[str] = set()
        self.trial_best: dict[str, float] = {}
        self.reason: str | None = None
        self.message = ""
        self._started: float | None = None

    def __getstate__(self):
        # a restored study measures its wall-clock budget from its restart
        return {**self.__dict__, "_started": None}

    @property
    def active(self) -> bool:
        return bool(self.plateau or self.budget_device_hours or self.time_budget_s)

    # Tune's side -------------------------------------------------------------------------
    def __call__(self, trial_id: str, result: dict) -> bool:
        self.device_seconds += float(result.get("time_this_iter_s") or 0.0) * self.device_share
        score = result.get(self.metric)
        if score is not None and math.isfinite(score):
            self.trial_best[trial_id] = max(score, self.trial_best.get(trial_id, -math.inf))
        return False

    def stop_all(self) -> bool:
        if self._started is None:
            self._started = time.monotonic()
        if self.reason is None:
            self._check()
        return self.reason is not None

    # the driver's side -------------------------------------------------------------------
    def trial_ended(self, trial_id: str) -> None:
        """A trial ended (completed, stopped by the scheduler or failed): the plateau count."""
        if trial_id in self.ended or self.reason is not None:
            return
        self.ended.add(trial_id)
        score = self.trial_best.get(trial_id, -math.inf)
        if score > self.best:
            self.best, self.since_best = score, 0
        else:
            self.since_best += 1

    def _check(self) -> None:
        hours = self.device_seconds / 3600
        if self.plateau and self.since_best >= self.plateau:
            self.reason = schema.STOP_PLATEAU
            self.message = (f"the best {self.metric} ({self.best:.4f}) has not improved in the last "
                            f"{self.since_best} trials (--plateau {self.plateau})")
        elif self.budget_device_hours and hours >= self.budget_device_hours:
            self.reason = schema.STOP_BUDGET
            self.message = (f"the trials used {hours:.4f} {self.device_unit}-hours of the budget of "
                            f"{self.budget_device_hours:g} (--budget-gpu-hours)")
        elif self.time_budget_s and time.monotonic() - self._started >= self.time_budget_s:
            self.reason = schema.STOP_TIME
            self.message = (f"the family's search ran {time.monotonic() - self._started:.0f} s of "
                            f"its {self.time_budget_s:g} s (--time-budget)")

    def summary(self) -> dict[str, str]:
        """What the study run records: device time used, and why the family stopped early."""
        out = {f"{self.device_unit.lower()}_hours": f"{self.device_seconds / 3600:.6f}"}
        if self.reason:
            out["stop"] = f"{self.reason}: {self.message}"
        return out
