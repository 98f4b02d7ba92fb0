"""A study read back from MLflow: its parent run, its trials, the best completed trial of each
family and the dataset folder it trained on. Shared by promotion, the hyper-ensemble, ``lenstune
report`` and ``lenstune predict``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from tuner.models.cost import COST_METRICS
from tuner.tracking import schema

# Fallbacks when a study run logged no dataset input: its ``data`` param (StudyConfig.data) or tag.
_DATA_ROOT_KEYS = (schema.DATA_PARAM, schema.DATA_ROOT_TAG)


class PromotionError(ValueError):
    """Nothing can be promoted: no study, no completed trial, data that does not match, ..."""


class StudyNotFoundError(PromotionError):
    """The experiment, or the study run named in it, does not exist (the user's input is wrong)."""


class TrialSummary(BaseModel):
    """A trial run as promotion sees it. ``val_auc``: best validation macro AUC over epochs;
    ``objective``: the metric its study maximised, ``score``: its best value (``val_auc`` for a
    study on the validation AUC)."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    family: str
    trial_id: str
    stop_reason: str
    val_auc: float
    epochs: int
    start_time_ms: int
    end_time_ms: int | None
    parent_run_id: str = ""  # the study run ("" when the run records none)
    objective: str = schema.OBJECTIVE
    score: float = float("nan")
    costs: dict[str, float] = {}  # what the trial measured of tuner.models.cost.COST_METRICS


def _all_runs(client, experiment_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def find_study(client, experiment: str, study_run_id: str | None = None):
    """The study run (``lenstune.kind=study``): ``study_run_id`` or the newest in ``experiment``."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise StudyNotFoundError(f"no MLflow experiment named {experiment!r}")
    if study_run_id:
        from mlflow.exceptions import MlflowException

        try:
            run = client.get_run(study_run_id)
        except MlflowException:
            raise StudyNotFoundError(f"no run {study_run_id!r} in the tracking store; give the "
                                     f"id of a study run of experiment {experiment!r}") from None
        if run.info.experiment_id != exp.experiment_id:
            raise StudyNotFoundError(f"run {study_run_id} is not in experiment {experiment!r}")
        return run
    studies = _all_runs(client, exp.experiment_id, f"tags.`{schema.KIND_TAG}` = '{schema.KIND_STUDY}'")
    if not studies:
        raise StudyNotFoundError(f"experiment {experiment!r} has no study run (tag lenstune.kind=study)")
    return max(studies, key=lambda r: r.info.start_time)


def _tag(run, name: str, default: str = "") -> str:
    tags = run.data.tags
    return tags.get(name, tags.get(f"lenstune.{name}", default))


def summarize_trial(client, run) -> TrialSummary:
    """Read one trial run: best validation macro AUC over its epochs, epochs run."""
    history = client.get_metric_history(run.info.run_id, schema.OBJECTIVE)
    values = [m.value for m in history if np.isfinite(m.value)]
    objective = run.data.params.get("objective", schema.OBJECTIVE)
    scores = values if objective == schema.OBJECTIVE else [
        m.value for m in client.get_metric_history(run.info.run_id, objective)
        if np.isfinite(m.value)]
    return TrialSummary(
        run_id=run.info.run_id,
        family=_tag(run, schema.FAMILY_TAG) or run.data.params.get("family", "?"),
        trial_id=_tag(run, schema.TRIAL_ID_TAG),
        stop_reason=_tag(run, schema.STOP_REASON_TAG, "unknown"),
        val_auc=max(values) if values else float("nan"),
        epochs=len(history),
        start_time_ms=run.info.start_time,
        end_time_ms=run.info.end_time,
        parent_run_id=run.data.tags.get("mlflow.parentRunId", ""),
        objective=objective,
        score=max(scores) if scores else float("nan"),
        costs={k: v for k, v in run.data.metrics.items() if k in COST_METRICS},
    )


def list_trials(client, experiment_id: str, study_run_id: str | None = None) -> list[TrialSummary]:
    """All trial runs of an experiment (of one study when ``study_run_id`` is given)."""
    query = f"tags.`{schema.KIND_TAG}` = '{schema.KIND_TRIAL}'"
    if study_run_id:
        query += f" and tags.`mlflow.parentRunId` = '{study_run_id}'"
    return [summarize_trial(client, run) for run in _all_runs(client, experiment_id, query)]


def completed(trials: list[TrialSummary]) -> list[TrialSummary]:
    """The trials that may be promoted: they ran their whole epoch budget (``stop_reason``
    ``completed``) and logged a finite validation macro AUC."""
    return [t for t in trials if t.stop_reason == schema.STOP_COMPLETED and np.isfinite(t.score)]


def best_completed(trials: list[TrialSummary]) -> dict[str, TrialSummary]:
    """Best completed trial of each family, by its study's objective (``score``)."""
    best: dict[str, TrialSummary] = {}
    for trial in completed(trials):
        if trial.family not in best or trial.score > best[trial.family].score:
            best[trial.family] = trial
    return best


def resolve_data_root(study, data_root: Path | None) -> Path:
    """``data_root``, else the dataset the study logged as its input, else a param/tag."""
    if data_root is not None:
        return Path(data_root)
    for dataset_input in getattr(study.inputs, "dataset_inputs", None) or []:
        try:
            uri = json.loads(dataset_input.dataset.source).get("uri")
        except (ValueError, AttributeError):
            uri = None
        if uri and Path(uri).is_dir():
            return Path(uri)
    for key in _DATA_ROOT_KEYS:
        value = study.data.params.get(key) or study.data.tags.get(key)
        if value and value != "None":
            return Path(value)
    raise PromotionError(
        f"study run {study.info.run_id} does not record its dataset folder "
        f"(looked for params/tags {', '.join(_DATA_ROOT_KEYS)}); pass --data DIR"
    )
