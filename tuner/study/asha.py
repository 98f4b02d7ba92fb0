"""ASHA with a rank rule at every rung, for small asynchronous studies.

Ray's ``ASHAScheduler`` decides at once whether a trial that reaches a rung goes on: it goes on
unless its score is below the ``1 - 1/rf`` percentile of the scores already recorded at that
rung. With few scores recorded that percentile is generous (the first trial at a rung always
goes on, the second whenever it beats the first, the third whenever it is above three quarters
of the way from the worse to the better of two), so the first trials of a study run almost to
the end whatever their quality. In a study of tens of trials that is several full trainings.

Here a trial that is the k-th to reach a rung goes on only if it ranks among the best
``max(1, floor(k / rf))`` of the k: the number that synchronous successive halving (and
promotion-based ASHA) would let through from a rung of k. Once many trials have reached a rung
the two rules agree; the difference is at the start. Measured effect:
``bench/results/search_efficiency.md``.

:class:`EqualFidelityOptunaSearch` is the searcher side of the same problem: what TPE is told
about a trial that ASHA stopped.
"""

from __future__ import annotations

import math

from ray.tune.schedulers import ASHAScheduler
from ray.tune.schedulers.async_hyperband import _Bracket
from ray.tune.search.optuna import OptunaSearch

from tuner.study.config import EPOCH_ATTR


def reported_epoch(result: dict) -> int | float | None:
    """The epoch a result reports (``EPOCH_ATTR``), else Ray's ``training_iteration``."""
    return result.get(EPOCH_ATTR, result.get("training_iteration"))


def rank_cutoff(recorded_scores: list[float], reduction_factor: float) -> float | None:
    """Smallest score that keeps a new trial among the best ``max(1, floor(k / rf))`` of the
    ``k = len(recorded_scores) + 1`` trials at a rung (ties go on); None when nothing is
    recorded (the first trial goes on). Scores are higher-is-better; NaNs are ignored."""
    scores = sorted((s for s in recorded_scores if not math.isnan(s)), reverse=True)
    if not scores:
        return None
    keep = max(1, int((len(scores) + 1) // reduction_factor))
    return scores[min(keep, len(scores)) - 1]


class _RankBracket(_Bracket):
    """Ray's bracket (rungs, bookkeeping, stop_last_trials) with :func:`rank_cutoff`."""

    def cutoff(self, recorded):
        return rank_cutoff(list(recorded.values()), self.rf)


class RankASHAScheduler(ASHAScheduler):
    """``ASHAScheduler`` (same arguments) whose rungs apply :func:`rank_cutoff`."""

    def __init__(self, *, time_attr: str = "training_iteration", max_t: int = 100,
                 grace_period: int = 1, reduction_factor: float = 4, brackets: int = 1,
                 stop_last_trials: bool = True, **kwargs):
        super().__init__(time_attr=time_attr, max_t=max_t, grace_period=grace_period,
                         reduction_factor=reduction_factor, brackets=brackets,
                         stop_last_trials=stop_last_trials, **kwargs)
        self._brackets = [
            _RankBracket(grace_period, max_t, reduction_factor, s,
                         stop_last_trials=stop_last_trials)
            for s in range(brackets)
        ]


class RestorableOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that leaves out results of a trial Optuna never suggested instead of
    failing the study (Ray's raises KeyError): a trial restored from an experiment state saved
    after this searcher's state, when a driver was killed between the two uploads; and results
    of a trial its storage has already ended (:meth:`_told`)."""

    def suggest(self, trial_id: str):
        """Ray's suggestion, with the Ray trial id kept on the Optuna trial (user attribute
        ``ray_trial_id``: the ``trial_id`` tag of its MLflow run), so the two can be matched
        in optuna-dashboard."""
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and isinstance(config, dict):
            ot_trial.set_user_attr("ray_trial_id", trial_id)
        return config

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        """Tune's own metric and mode (the study's one objective) do not replace the list of a
        multi-objective search."""
        if isinstance(self._metric, list):
            metric, mode = None, None
        return super().set_search_properties(metric, mode, config, **spec)

    def _told(self, trial_id: str) -> bool:
        """Whether the Optuna trial of ``trial_id`` has already ended in its storage: with a
        persistent storage the database can be ahead of this searcher's pickled state (a driver
        killed after telling a trial, before Tune saved the searcher), and a finished trial
        takes no more reports."""
        try:
            ot_trial = self._ot_trials[trial_id]
            return ot_trial.storage.get_trial(ot_trial._trial_id).state.is_finished()
        except Exception:  # noqa: BLE001 - in memory, or unreadable: as Ray would
            return False

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._ot_trials and not self._told(trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id in self._ot_trials and not self._told(trial_id):
            super().on_trial_complete(trial_id, result, error)


class EqualFidelityOptunaSearch(RestorableOptunaSearch):
    """Optuna search that tells Optuna each trial's score at epoch ``at_epoch`` (the first
    rung) instead of its last one.

    Under ASHA a trial's last score comes from however many epochs it ran: 16-epoch scores of
    the few trials that went through every rung sit beside 1-epoch scores of stopped ones, and
    TPE takes the configurations of the first trials through the rungs for the good region.
    Every trial reaches the first rung, so scores there compare like with like. A trial that
    ends before ``at_epoch`` (an error, a time budget) is told as Ray's OptunaSearch would.
    """

    def __init__(self, *args, at_epoch: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self._at_epoch = at_epoch
        self._first_rung: dict[str, float] = {}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        super().on_trial_result(trial_id, result)
        if reported_epoch(result) == self._at_epoch and self._metric in result:
            self._first_rung[trial_id] = result[self._metric]

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if result is not None and not error and trial_id in self._first_rung:
            result = {**result, self._metric: self._first_rung.pop(trial_id)}
        super().on_trial_complete(trial_id, result, error)
