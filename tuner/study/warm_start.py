"""Warm start: seed a family's searcher with the best configurations of an earlier study.

``--warm-start SOURCE`` names an earlier study (its name, the ``lenstune.study`` tag of its
study run) or an MLflow experiment (every study in it), on the same tracking server. For each
family of the new study, the earlier trials of that family that ended on the study's terms
(``completed``, ``asha_stopped``, a study-level stop) and have a best score of the new study's
objective are read from MLflow; each must fit the family's current search space (every fixed
value the same, every searched value inside its range or among its choices), else the warm start
is refused with the differences named. The ``warm_start_top`` best configurations are enqueued in
the Optuna study, so they are the family's first trials; the searcher then models their results
like any other trial's.
"""

from __future__ import annotations

import math
from typing import Any

from tuner.study.config import ConfigError
from tuner.study.search_space import Choice, IntRange, SearchSpace
from tuner.tracking import schema


def _parse(dist, text: str):
    """The value of a searched parameter from its MLflow text, in the distribution's type, or
    None when it is not one of the distribution's values."""
    if isinstance(dist, Choice):
        return next((v for v in dist.values if str(v) == text), None)
    try:
        value = int(text) if isinstance(dist, IntRange) else float(text)
    except ValueError:
        return None
    if not dist.low <= value <= dist.high:
        return None
    if isinstance(dist, IntRange) and (value - dist.low) % dist.step:
        return None
    return value


def configuration_of(space: SearchSpace, params: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """(Optuna-named searched values, problems) of an earlier trial's MLflow params against
    ``space``: a problem for every fixed value that differs and every searched value missing or
    outside the space."""
    point, problems = {}, []
    for part, section in (("model", space.model), ("train", space.train)):
        for key, value in section.fixed.items():
            seen = params.get(f"{part}.{key}")
            if seen is not None and seen != str(value):
                problems.append(f"{part}.{key} was {seen}, is fixed at {value} now")
        for key, dist in section.search.items():
            seen = params.get(f"{part}.{key}")
            value = None if seen is None else _parse(dist, seen)
            if value is None:
                allowed = (dist.values if isinstance(dist, Choice)
                           else f"{dist.low}..{dist.high}")
                problems.append(f"{part}.{key} was {seen if seen is not None else 'not searched'}, "
                                f"allowed now: {allowed}")
            else:
                point[f"{part}/{key}"] = value
    return point, problems


def warm_start_points(space: SearchSpace, trials: list[tuple[dict[str, str], float]], *,
                      source: str, top: int) -> list[dict[str, Any]]:
    """The ``top`` best distinct configurations of ``trials`` = [(MLflow params, best score)],
    Optuna-named; ConfigError when there are none or when a trial does not fit ``space``."""
    family = space.family
    scored = [(p, s) for p, s in trials if s is not None and math.isfinite(s)]
    if not scored:
        raise ConfigError(f"--warm-start {source}: no finished trial of family {family!r} with a "
                          "score of this study's objective; allowed: a study or experiment on the "
                          f"same tracking server that tuned {family!r} with the same --objective")
    points: list[dict[str, Any]] = []
    for params, score in sorted(scored, key=lambda t: -t[1]):
        point, problems = configuration_of(space, params)
        if problems:
            raise ConfigError(
                f"--warm-start {source}: the search space of family {family!r} differs from the "
                f"one its trials were drawn from ({len(problems)} difference(s): "
                + "; ".join(problems[:6]) + "); allowed: a study of the same family and profile "
                "whose fixed values match and whose values lie inside today's ranges")
        if point not in points:
            points.append(point)
    return points[:top]


def read_earlier_trials(client, source: str, family: str, objective: str
                        ) -> list[tuple[dict[str, str], float]]:
    """[(params, best score of ``objective``)] of the ``family`` trial runs that ended on the
    study's terms in the study named ``source``, or in every study of the experiment named
    ``source``. ConfigError when neither exists."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    studies = client.search_runs(
        experiments, filter_string=f"tags.`{schema.KIND_TAG}` = '{schema.KIND_STUDY}' and "
        f"tags.`{schema.STUDY_TAG}` = '{source}'", max_results=100)
    if not studies:
        experiment = client.get_experiment_by_name(source)
        if experiment is not None:
            studies = client.search_runs(
                [experiment.experiment_id],
                filter_string=f"tags.`{schema.KIND_TAG}` = '{schema.KIND_STUDY}'", max_results=1000)
    if not studies:
        raise ConfigError(f"--warm-start {source}: no study or MLflow experiment of that name on "
                          "the tracking server; allowed: a study name (the leaderboard's header, "
                          "the tag lenstune.study) or an experiment name")
    from tuner.tracking.writer import list_trial_runs

    metric = schema.best_of(objective)
    trials = []
    for study in studies:
        for run in list_trial_runs(client, study.info.experiment_id, study.info.run_id):
            tags = run.data.tags
            if (tags.get(schema.FAMILY_TAG) == family
                    and tags.get(schema.STOP_REASON_TAG) in schema.FINISHED_REASONS):
                trials.append((dict(run.data.params), run.data.metrics.get(metric)))
    return trials
