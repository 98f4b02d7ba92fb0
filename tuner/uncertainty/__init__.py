"""Uncertainty methods wrapped around any trained classifier (nothing here touches the
architectures): temperature scaling, MC dropout, deep and hyper-ensembles, last-layer Laplace,
split conformal prediction sets, and out-of-distribution scores.

Every probabilistic method returns a :class:`Predictive` (probs (N, C), optional samples
(S, N, C), forward passes per image).
"""

from tuner.uncertainty.ensemble import DeepEnsemble, ensemble_predict, greedy_hyper_ensemble
from tuner.uncertainty.laplace import LastLayerLaplace
from tuner.uncertainty.mc_dropout import MCDropout, mc_dropout_predict
from tuner.uncertainty.predictive import (
    Deterministic,
    Predictive,
    collect_logits,
    mutual_information,
    predictive_entropy,
)
from tuner.uncertainty.temperature import TemperatureScaled, TemperatureScaler

__all__ = [
    "DeepEnsemble",
    "Deterministic",
    "LastLayerLaplace",
    "MCDropout",
    "Predictive",
    "TemperatureScaled",
    "TemperatureScaler",
    "collect_logits",
    "ensemble_predict",
    "greedy_hyper_ensemble",
    "mc_dropout_predict",
    "mutual_information",
    "predictive_entropy",
]
