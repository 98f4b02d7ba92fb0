"""Progress of a study as people read it: one log line per ended trial, with the family's
place among the study's families, trials ended out of the family's samples, how the trial
ended and the best validation macro AUC so far (:class:`StudyProgress`, a Tune callback)."""

from __future__ import annotations

import logging
import math

from ray import tune

from tuner.study.asha import reported_epoch
from tuner.tracking import schema

log = logging.getLogger(__name__)


class StudyProgress(tune.Callback):
    """Logs ``family 2/5 swin: trial 7/32 ended ...; best so far 0.9731 (trial ...)``.

    Counts come from Tune's own trial list, so a restored study carries on counting where it
    was. Picklable: Tune saves it with the study."""

    def __init__(self, family: str, index: int, n_families: int, num_samples: int,
                 max_epochs: int, objective: str = schema.OBJECTIVE, strategy=None,
                 stopper=None):
        from tuner.study.strategies import DEFAULT_STRATEGY, get_strategy

        self.family, self.index, self.n_families = family, index, n_families
        self.num_samples, self.max_epochs = num_samples, max_epochs
        self.objective = objective
        self.strategy = strategy or get_strategy(DEFAULT_STRATEGY)
        self.stopper = stopper  # the family's StudyStopper (the one Tune and the trial runs ask)

    def __setstate__(self, state: dict) -> None:
        # a study saved before the callback knew its strategy and stopper: ASHA's, none
        from tuner.study.strategies import DEFAULT_STRATEGY, get_strategy

        state.setdefault("strategy", get_strategy(DEFAULT_STRATEGY))
        state.setdefault("stopper", None)
        state.pop("stopped_by", None)
        self.__dict__.update(state)

    def _label(self) -> str:
        return f"family {self.index}/{self.n_families} {self.family}"

    def _score(self, trial) -> float:
        value = (trial.last_result or {}).get(schema.best_of(self.objective), float("nan"))
        return float(value) if isinstance(value, (int, float)) else float("nan")

    def line(self, trials: list, trial, how: str) -> str:
        """The progress line after ``trial`` ended ``how``."""
        ended = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
        ended.add(trial.trial_id)
        scored = [t for t in trials if math.isfinite(self._score(t))]
        best = max(scored, key=self._score, default=None)
        best_text = (f"best so far {self._score(best):.4f} (trial {best.trial_id})"
                     if best is not None else "no score yet")
        own = self._score(trial)
        what = "robust AUC" if self.objective == schema.ROBUST_OBJECTIVE else "val AUC"
        own_text = f", best {what} {own:.4f}" if math.isfinite(own) else ""
        return (f"{self._label()}: trial {len(ended)}/{self.num_samples} ({trial.trial_id}) "
                f"{how}{own_text}; {best_text}")

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        log.debug("%s: trial %s started: %s", self._label(), trial.trial_id, trial.config)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        from tuner.study.search import trial_end

        epochs = int(reported_epoch(trial.last_result or {}) or 0)
        reason, message = trial_end(self.strategy, self.stopper, trial, self.max_epochs)
        if reason == schema.STOP_COMPLETED:
            how = f"completed {epochs} epochs"
        elif reason in schema.STUDY_STOPS:
            how = f"stopped with the study ({reason}) after {epochs}/{self.max_epochs} epochs"
        else:
            how = message
        log.info(self.line(trials, trial, how))

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        log.warning(self.line(trials, trial, "failed (its run's stop_message says why)"))
