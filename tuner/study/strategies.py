"""Search strategies: what samples a family's trials, what stops a trial early, what the
searcher is told, and how a trial's early end is named.

A strategy is a pair of parts that :mod:`tuner.study.search` builds:

- a **searcher** (Optuna, seeded, behind a concurrency limit): ``tpe``, ``gp``, ``random``
  or ``grid``; or BOHB's (``bohb``: Ray's ``TuneBOHB``, a kernel-density model per budget), or
  Tune's random variants where the scheduler picks configurations itself (PBT, PB2);
- a **scheduler**: ``asha`` (the rank rule of :mod:`tuner.study.asha`, rungs from the search
  space's ``budget``), ``hyperband`` (Ray's ``HyperBandForBOHB``: synchronous brackets that
  pause trials at their milestones and resume the best from a checkpoint), ``pbt``, ``pb2``
  or ``fifo`` (every trial trains its whole budget).

==============  ========  =========  ===========================================================
name            searcher  scheduler  for
==============  ========  =========  ===========================================================
asha-tpe        tpe       asha       the default: TPE proposes, ASHA stops the weak early
asha-gp         gp        asha       Optuna's Gaussian-process sampler instead of TPE
random          random    fifo       the baseline every search is measured against
grid            grid      fifo       a fixed grid (``grid_points`` per numeric range), in a
                                     seeded random order; the study's samples are at most the grid
pbt             variants  pbt        population-based training: the search space's random
                                     draws, and every ``pbt.perturbation_interval`` epochs the worst
                                     quarter copies a best quarter's checkpoint and configuration
                                     and perturbs its ``pbt.mutable`` train hyperparameters
pb2             variants  pb2        PB2: PBT whose new values of the ``pbt.mutable``
                                     hyperparameters a Gaussian-process bandit picks within their
                                     ranges (numeric ones only) instead of random perturbations
hyperband-bohb  bohb      hyperband  BOHB: HyperBand brackets (max epochs and reduction
                                     factor from ``budget``), sampled by BOHB's density model
nsga2           nsga2     fifo       multi-objective (``--objectives``): Optuna's NSGA-II
mo-tpe          tpe       fifo       multi-objective (``--objectives``): Optuna's multi-objective TPE
==============  ========  =========  ===========================================================

Under ASHA the searcher is told a trial's score at the first rung (``--tpe-told``, see
:class:`tuner.study.asha.EqualFidelityOptunaSearch`); under FIFO every trial's last score.
A trial that ends before its epoch budget is named for what ended it: the scheduler
(``asha_stopped``, ``hyperband_stopped``), or the study (``plateau_stopped``, ``budget_stopped``,
``time_budget_stopped``: :mod:`tuner.study.stopping`). The strategy is recorded on the study
run (``lenstune.strategy`` and the ``strategy`` parameter).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tuner.tracking import schema


def rung_epochs(max_epochs: int, grace_period: int, reduction_factor: float) -> list[int]:
    """The epochs at which ASHA decides whether a trial goes on, ascending: Ray's rungs
    ``grace_period * rf**k`` below ``max_epochs`` (``_Bracket``'s formula), the only epochs at
    which the scheduler can stop a trial. Trials save a Tune checkpoint there and at the end."""
    grace = min(grace_period, max_epochs)
    count = int(math.log(max_epochs / grace) / math.log(reduction_factor) + 1)
    return sorted({int(grace * reduction_factor ** k) for k in range(count)
                   if grace * reduction_factor ** k < max_epochs})


def milestone_epochs(max_epochs: int, reduction_factor: float) -> list[int]:
    """The epochs below ``max_epochs`` at which HyperBand may pause or stop a trial, ascending:
    Ray's ``HyperBandScheduler`` brackets (``s_max_1``, ``_get_r0`` and the milestone
    update of ``_Bracket.successive_halving``, restated)."""
    eta = reduction_factor
    s_max_1 = int(round(math.log(max_epochs) / math.log(eta))) + 1
    epochs = set()
    for s in range(s_max_1):
        r = int(max_epochs * eta ** (-s))
        while 0 < r < max_epochs:
            epochs.add(r)
            r = int(min(r * eta, max_epochs))
    return sorted(epochs)


@dataclass(frozen=True)
class Strategy:
    name: str
    sampler: str  # tuner.study.search.make_searcher's sampler
    scheduler: str  # "asha" | "fifo"
    summary: str
    multi_objective: bool = False  # searches --objectives (two or more); the others, one

    @property
    def early_stopping(self) -> bool:
        """ASHA stops trials at rungs (the searcher learns from the first rung's scores)."""
        return self.scheduler == "asha"

    @property
    def population(self) -> bool:
        """PBT or PB2: trials copy each other's checkpoints and perturb ``pbt.mutable``."""
        return self.scheduler in ("pbt", "pb2")

    @property
    def decides_at(self) -> str | None:
        """What the epochs of :meth:`decision_epochs` are called (a figure's legend)."""
        return {"asha": "ASHA's rungs", "hyperband": "HyperBand's milestones",
                "pbt": "PBT's perturbations", "pb2": "PB2's perturbations"}.get(self.scheduler)

    def decision_epochs(self, space, max_epochs: int) -> list[int]:
        """The epochs below ``max_epochs`` where the scheduler may stop a trial (ASHA's rungs),
        pause it (HyperBand's milestones) or have another trial copy it (every PBT/PB2
        perturbation interval); none where every trial trains its whole budget."""
        if self.population:
            interval = space.pbt.perturbation_interval
            return list(range(interval, max_epochs, interval))
        if self.scheduler == "hyperband":
            return milestone_epochs(max_epochs, space.budget.reduction_factor)
        if self.scheduler == "asha":
            return rung_epochs(max_epochs, space.budget.grace_period,
                               space.budget.reduction_factor)
        return []

    def trial_end(self, epochs: int, max_epochs: int, study_stop: str | None = None,
                  study_message: str = "") -> tuple[str, str]:
        """Stop reason and message of a trial that ended, not failed, after ``epochs``: its
        whole budget, else the study's stop (``study_stop``: the study stopper's reason, when
        it has stopped the study), else the strategy's scheduler."""
        if epochs >= max_epochs:
            return schema.STOP_COMPLETED, ""
        if study_stop:
            return study_stop, (f"{study_message}; the trial had trained {epochs} of "
                                f"{max_epochs} epochs")
        return self.early_stop(epochs, max_epochs)

    def early_stop(self, epochs: int, max_epochs: int) -> tuple[str, str]:
        """Stop reason and message of a trial the scheduler ended after ``epochs`` of
        ``max_epochs`` (the study did not stop)."""
        if self.scheduler == "asha":
            return schema.STOP_ASHA, f"stopped by ASHA after {epochs} of {max_epochs} epochs"
        if self.scheduler == "hyperband":
            return (schema.STOP_HYPERBAND,
                    f"stopped by HyperBand (BOHB) after {epochs} of {max_epochs} epochs")
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
    Strategy("pb2", "variants", "pb2", "PB2: population-based training whose new values of the "
             "declared mutable hyperparameters a Gaussian-process bandit picks"),
    Strategy("hyperband-bohb", "bohb", "hyperband", "BOHB: HyperBand brackets sampled by a "
             "density model of the best configurations at each budget"),
    Strategy("nsga2", "nsga2", "fifo", "Optuna NSGA-II over --objectives, every trial to its "
             "whole budget", multi_objective=True),
    Strategy("mo-tpe", "tpe", "fifo", "Optuna multi-objective TPE over --objectives, every trial "
             "to its whole budget", multi_objective=True),
)}
DEFAULT_STRATEGY = "asha-tpe"


@dataclass(frozen=True)
class SearchPlan:
    """A strategy made concrete for one family's search space: every strategy argument
    :func:`tuner.study.search.build_tuner` needs, so the rest of a study (resources, storage,
    callbacks) does not depend on which strategy runs.

    ``samples``: the trials (fewer than asked where a grid has fewer points); ``max_epochs``,
    ``grace_period``, ``reduction_factor``: the budget (ASHA's rungs, HyperBand's brackets);
    ``tell_epoch``: the epoch whose score the Optuna searcher is told (ASHA with
    ``tpe_told="first-rung"``; else the trial's last); ``grid``: the grid's values per
    parameter (``grid``); ``mutations``: PBT's ``hyperparam_mutations`` or PB2's
    ``hyperparam_bounds``, perturbed every ``perturbation_interval`` epochs and kept in
    ``ranges`` (``pbt``, ``pb2``)."""

    strategy: Strategy
    samples: int
    max_epochs: int
    grace_period: int
    reduction_factor: float
    asha_rule: str = "rank"
    tell_epoch: int | None = None
    grid: dict | None = None
    mutations: dict | None = None
    perturbation_interval: int | None = None
    ranges: dict | None = None


def search_plan(strategy: Strategy, space, *, samples: int, max_epochs: int, grid_points: int,
                tpe_told: str, asha_rule: str = "rank") -> SearchPlan:
    """The :class:`SearchPlan` of ``strategy`` over a family's search space (its ``budget``,
    ``pbt`` section and ranges), ``samples`` trials of at most ``max_epochs`` epochs."""
    grid = mutations = ranges = interval = tell_epoch = None
    if strategy.sampler == "grid":
        grid = space.grid(grid_points)
        samples = min(samples, math.prod(len(values) for values in grid.values()))
    if strategy.early_stopping and tpe_told == "first-rung":
        tell_epoch = space.budget.grace_period
    if strategy.population:
        mutations = space.mutations() if strategy.scheduler == "pbt" else space.pb2_bounds()
        interval, ranges = space.pbt.perturbation_interval, space.mutable_ranges()
    return SearchPlan(strategy, samples, max_epochs, space.budget.grace_period,
                      space.budget.reduction_factor, asha_rule=asha_rule, tell_epoch=tell_epoch,
                      grid=grid, mutations=mutations, perturbation_interval=interval,
                      ranges=ranges)


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"strategy {name!r} not known; allowed: {', '.join(STRATEGIES)}") from None
