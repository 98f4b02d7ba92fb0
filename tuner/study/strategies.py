"""Search strategies: what samples a family's trials, what stops a trial early, what the
searcher is told, and how a trial's early end is named.

A strategy is a pair of parts that :mod:`tuner.study.search` builds:

- a **searcher** (Optuna, seeded, behind a concurrency limit): ``tpe``, ``gp``, ``random``
  or ``grid``;
- a **scheduler**: ``asha`` (the rank rule of :mod:`tuner.study.asha`, rungs from the search
  space's ``budget``) or ``fifo`` (every trial trains its whole budget).

=========  ========  =========  ===========================================================
name       searcher  scheduler  for
=========  ========  =========  ===========================================================
asha-tpe   tpe       asha       the default: TPE proposes, ASHA stops the weak early
asha-gp    gp        asha       Optuna's Gaussian-process sampler instead of TPE
random     random    fifo       the baseline every search is measured against
grid       grid      fifo       a fixed grid (``grid_points`` per numeric range), in a
                                seeded random order; the study's samples are at most the grid
pbt        variants  pbt        population-based training: the search space's random
                                draws, and every ``pbt.perturbation_interval`` epochs the worst
                                quarter copies a best quarter's checkpoint and configuration
                                and perturbs its ``pbt.mutable`` train hyperparameters
nsga2      nsga2     fifo       multi-objective (``--objectives``): Optuna's NSGA-II
mo-tpe     tpe       fifo       multi-objective (``--objectives``): Optuna's multi-objective TPE
=========  ========  =========  ===========================================================

Under ASHA the searcher is told a trial's score at the first rung (``--tpe-told``, see
:class:`tuner.study.asha.EqualFidelityOptunaSearch`); under FIFO every trial's last score.
A trial that ends before its epoch budget is named for what ended it: the scheduler
(``asha_stopped``), or the study (``plateau_stopped``, ``budget_stopped``,
``time_budget_stopped``: :mod:`tuner.study.stopping`). The strategy is recorded on the study
run (``lenstune.strategy`` and the ``strategy`` parameter).
"""

from __future__ import annotations

from dataclasses import dataclass

from tuner.tracking import schema


@dataclass(frozen=True)
class Strategy:
    name: str
    sampler: str  # tuner.study.search.make_searcher's sampler
    scheduler: str  # "asha" | "fifo"
    summary: str
    multi_objective: bool = False  # searches --objectives (two or more); the others, one

    @property
    def early_stopping(self) -> bool:
        return self.scheduler == "asha"

    def early_stop(self, epochs: int, max_epochs: int) -> tuple[str, str]:
        """Stop reason and message of a trial the scheduler ended after ``epochs`` of
        ``max_epochs`` (the study did not stop)."""
        if self.scheduler == "asha":
            return schema.STOP_ASHA, f"stopped by ASHA after {epochs} of {max_epochs} epochs"
        if self.scheduler == "pbt":  # PBT never stops a trial; a trial it stopped is not ours
            return schema.STOP_ASHA, f"stopped by PBT after {epochs} of {max_epochs} epochs"
        raise ValueError(f"strategy {self.name!r} stops no trial early; a trial that ended after "
                         f"{epochs} of {max_epochs} epochs was stopped by the study")


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("asha-tpe", "tpe", "asha", "Optuna TPE, ASHA early stopping (the default)"),
    Strategy("asha-gp", "gp", "asha", "Optuna's Gaussian-process sampler, ASHA early stopping"),
    Strategy("random", "random", "fifo", "random search, every trial to its whole budget"),
    Strategy("grid", "grid", "fifo", "a grid over the search space, every trial to its whole "
             "budget"),
    Strategy("pbt", "variants", "pbt", "population-based training: exploit copies a better "
             "trial's checkpoint and perturbs the declared mutable hyperparameters"),
    Strategy("nsga2", "nsga2", "fifo", "Optuna NSGA-II over --objectives, every trial to its "
             "whole budget", multi_objective=True),
    Strategy("mo-tpe", "tpe", "fifo", "Optuna multi-objective TPE over --objectives, every trial "
             "to its whole budget", multi_objective=True),
)}
DEFAULT_STRATEGY = "asha-tpe"


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"strategy {name!r} not known; allowed: {', '.join(STRATEGIES)}") from None
