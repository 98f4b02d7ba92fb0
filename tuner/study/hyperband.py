"""BOHB (``--strategy hyperband-bohb``): Ray's ``HyperBandForBOHB`` scheduler with its
``TuneBOHB`` searcher (Falkner, Klein & Hutter 2018).

HyperBand runs brackets of successive halving, each starting its trials at a different budget:
with ``max_t`` epochs and reduction factor ``eta`` the brackets start at ``max_t / eta**s``
epochs for ``s = 0 .. round(log_eta(max_t))``. Within a bracket every trial trains to the
bracket's milestone and is **paused** there; once the bracket's trials have all reached it, the
best ``1/eta`` resume (from the checkpoint saved at the milestone) and the others stop
(``hyperband_stopped``). BOHB samples each new trial from a kernel-density model of the best
configurations seen at the largest budget that has enough of them (random until then).

A trial saves a Tune checkpoint at every milestone of every bracket
(:func:`tuner.study.strategies.milestone_epochs`), so a paused trial resumes where it stopped.
The searcher has no Optuna study: no dashboard, and ``--warm-start`` does not apply.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray.tune.search.bohb import TuneBOHB


def _plain(value: Any) -> Any:
    """Numpy scalars (ConfigSpace hands them out) as Python ones, in nested dicts."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def config_space(spec: dict[str, Any]):
    """The ConfigSpace space of a Tune ``param_space``'s distributions, named by their
    '/'-joined paths (``model/depth``). Ray's own conversion drops ``tune.qrandint``'s step and
    takes one off its (inclusive) upper end, which makes ``int`` ranges of two values illegal;
    here ``qrandint(low, high, step)`` is every allowed value from low to high."""
    import ConfigSpace
    from ray.tune.search.sample import Categorical, Float, Integer, LogUniform, Quantized, Uniform
    from ray.tune.search.variant_generator import parse_spec_vars

    _, domains, grids = parse_spec_vars(spec)
    if grids:
        raise ValueError("BOHB takes no grid_search values")
    space = ConfigSpace.ConfigurationSpace()
    for path, domain in domains:
        name = "/".join(str(p) for p in path)
        sampler = domain.get_sampler()
        if isinstance(domain, Float) and isinstance(sampler, (LogUniform, Uniform)):
            space.add(ConfigSpace.UniformFloatHyperparameter(
                name, lower=domain.lower, upper=domain.upper, log=isinstance(sampler, LogUniform)))
        elif isinstance(domain, Integer) and isinstance(sampler, Quantized):  # inclusive upper
            values = list(range(int(domain.lower), int(domain.upper) + 1, int(sampler.q)))
            space.add(ConfigSpace.UniformIntegerHyperparameter(name, lower=values[0],
                                                               upper=values[-1])
                      if int(sampler.q) == 1 else
                      ConfigSpace.OrdinalHyperparameter(name, sequence=values))
        elif isinstance(domain, Integer) and isinstance(sampler, Uniform):  # exclusive upper
            space.add(ConfigSpace.UniformIntegerHyperparameter(
                name, lower=int(domain.lower), upper=int(domain.upper) - 1))
        elif isinstance(domain, Categorical):
            space.add(ConfigSpace.CategoricalHyperparameter(name, choices=list(domain.categories)))
        else:
            raise ValueError(f"BOHB cannot search {name}: {type(domain).__name__} sampled by "
                             f"{type(sampler).__name__}; allowed: loguniform, uniform, int, choice")
    return space


class PlainTuneBOHB(TuneBOHB):
    """``TuneBOHB`` over :func:`config_space`, whose configurations hold plain Python values
    (MLflow parameters, the pydantic hyperparameters), not ConfigSpace's numpy scalars."""

    @staticmethod
    def convert_search_space(spec: dict) -> Any:
        return config_space(spec)

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        return _plain(config) if isinstance(config, dict) else config


def make_bohb(*, metric: str, mode: str, seed: int, max_concurrent: int, max_epochs: int,
              reduction_factor: float, time_attr: str):
    """BOHB's searcher (seeded) and scheduler."""
    from ray.tune.schedulers import HyperBandForBOHB

    searcher = PlainTuneBOHB(metric=metric, mode=mode, seed=seed, max_concurrent=max_concurrent)
    scheduler = HyperBandForBOHB(time_attr=time_attr, max_t=max_epochs,
                                 reduction_factor=reduction_factor, stop_last_trials=True)
    return searcher, scheduler
