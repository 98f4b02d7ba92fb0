"""What the report shows, read from MLflow alone: the family leaderboard of an experiment and,
of one study, its trials' learning curves, ASHA budgets, parameter importances, each family's
ROC, the champion's test probabilities and any robustness or Pareto figures it logged.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuner import metrics
from tuner.progress import progress
from tuner.tracking import schema
from tuner.tracking.reader import TrialSummary, best_completed, list_trials

FIELDS = ("family", "trials", "completed", "best_val_auc", "test_auc", "test_acc", "test_ece",
          "test_nll", "epochs", "cpu_hours", "gpu_hours", "run_id", "params")


def _number(text: str | None, default: float) -> float:
    try:
        return float(text) if text is not None else default
    except ValueError:  # "auto" in a study's configured params
        return default


def _study_resources(client, experiment_id: str) -> dict[tuple[str, str], tuple[float, float]]:
    """(study run id, family) -> (CPUs, GPUs) per trial, from the study's params: the resolved
    ``resources.<family>.*`` values, else (older studies) the configured ones, which family ""
    holds for every study."""
    out = {}
    for study in client.search_runs([experiment_id], f"tags.`{schema.KIND_TAG}` = '{schema.KIND_STUDY}'",
                                    max_results=5000):
        params = study.data.params
        cpus = _number(params.get("cpus_per_trial"), 1.0)
        gpus = _number(params.get("gpus_per_trial"), 0.0)
        out[study.info.run_id, ""] = (cpus, gpus)
        for family in filter(None, params.get("families", "").split(",")):
            out[study.info.run_id, family] = (
                _number(params.get(f"resources.{family}.cpus_per_trial"), cpus),
                _number(params.get(f"resources.{family}.gpus_per_trial"), gpus))
    return out


def family_rows(client, experiment_id: str) -> tuple[list[dict], dict[str, TrialSummary]]:
    """Leaderboard rows (best test AUC first, then best val AUC) and each family's best trial.

    Per family: trials run and completed, the best validation macro AUC among completed trials,
    that trial's test metrics (logged by promotion, which evaluates every family's best), its
    hyperparameters, epochs spent, and compute: each trial's wall time times the CPUs / GPUs per
    trial its study recorded (1 CPU and 0 GPUs when absent)."""
    trials = list_trials(client, experiment_id)
    best = best_completed(trials)
    resources = _study_resources(client, experiment_id)
    rows = []
    for family in sorted({t.family for t in trials}):
        mine = [t for t in trials if t.family == family]
        cpu_h = gpu_h = 0.0
        for t in mine:
            if t.end_time_ms is None:
                continue
            hours = (t.end_time_ms - t.start_time_ms) / 3.6e6
            cpus, gpus = resources.get((t.parent_run_id, family),
                                       resources.get((t.parent_run_id, ""), (1.0, 0.0)))
            cpu_h, gpu_h = cpu_h + hours * cpus, gpu_h + hours * gpus
        row = {"family": family, "trials": len(mine),
               "completed": sum(t.stop_reason == schema.STOP_COMPLETED for t in mine),
               "epochs": sum(t.epochs for t in mine),
               "cpu_hours": cpu_h, "gpu_hours": gpu_h}
        if family in best:
            run = client.get_run(best[family].run_id)
            m = run.data.metrics
            row.update(best_val_auc=best[family].val_auc, run_id=run.info.run_id,
                       params=" ".join(f"{k}={v}" for k, v in sorted(run.data.params.items())
                                       if k.startswith(("model.", "train."))))
            for key in ("auc", "acc", "ece", "nll"):
                name = "test_auc_macro" if key == "auc" else f"test_{key}"
                row[f"test_{key}"] = m.get(name)
        rows.append({field: row.get(field) for field in FIELDS})
    rows.sort(key=lambda r: (-(r["test_auc"] or -1.0), -(r["best_val_auc"] or -1.0)))
    return rows, best


@dataclass(frozen=True)
class TrialCurve:
    """A trial's validation macro AUC per epoch and how it ended."""

    run_id: str
    family: str
    trial_id: str
    stop_reason: str
    epochs: list[int]
    values: list[float]


def trial_curves(client, experiment_id: str, study_run_id: str) -> list[TrialCurve]:
    """Learning curves of every trial of the study (one metric-history read per trial)."""
    from tuner.tracking.writer import list_trial_runs

    runs = [r for r in list_trial_runs(client, experiment_id, study_run_id)
            if r.data.tags.get(schema.KIND_TAG) == schema.KIND_TRIAL]
    curves = []
    for run in progress(runs, desc="report: learning curves", unit="trial", leave=False):
        history = sorted(client.get_metric_history(run.info.run_id, schema.OBJECTIVE),
                         key=lambda m: m.step)
        tags = run.data.tags
        curves.append(TrialCurve(run.info.run_id, tags.get(schema.FAMILY_TAG, "?"),
                                 tags.get(schema.TRIAL_ID_TAG, ""),
                                 tags.get(schema.STOP_REASON_TAG, "unknown"),
                                 [m.step for m in history], [m.value for m in history]))
    return curves


def _artifact_jsons(client, run_id: str, folder: str) -> dict[str, dict]:
    """{file stem: parsed JSON} of the ``*.json`` artifacts under ``folder`` of a run."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for item in client.list_artifacts(run_id, folder):
            if item.path.endswith(".json"):
                local = client.download_artifacts(run_id, item.path, tmp)
                out[Path(item.path).stem] = json.loads(Path(local).read_text())
    return out


def decision_epochs(client, study_run_id: str) -> tuple[str | None, dict[str, list[int]]]:
    """What the study's strategy calls the epochs where its scheduler decides (``"ASHA's
    rungs"``; None for a strategy that decides nowhere), and family -> those epochs
    (:meth:`~tuner.study.strategies.Strategy.decision_epochs`), from the study's ``strategy``
    and ``max_epochs`` params (``--max-epochs`` overrides the budget's) and its logged search
    spaces (``search_space/<family>.json``)."""
    from tuner.study.search_space import SearchSpace
    from tuner.study.strategies import DEFAULT_STRATEGY, get_strategy

    params = client.get_run(study_run_id).data.params
    try:
        strategy = get_strategy(params.get("strategy", DEFAULT_STRATEGY))  # older studies: ASHA
    except ValueError:
        return None, {}
    override = params.get("max_epochs", "None")
    epochs = {}
    for family, spec in _artifact_jsons(client, study_run_id, "search_space").items():
        try:
            space = SearchSpace.model_validate(spec)
            top = int(override) if override not in ("None", "") else space.budget.max_epochs
        except (ValueError, TypeError):
            continue
        epochs[family] = strategy.decision_epochs(space, top)
    return strategy.decides_at, epochs


def importances(client, study_run_id: str) -> dict[str, dict[str, float]]:
    """family -> {parameter: fANOVA importance} the study logged (``param_importances/``)."""
    return {family: values for family, values in
            _artifact_jsons(client, study_run_id, "param_importances").items() if values}


def family_rocs(client, rows: list[dict], class_names: list[str] | None
                ) -> dict[str, tuple[str, dict[str, dict[str, list[float]]]]]:
    """family -> ("test" | "validation", {class: {"fpr", "tpr"}}) of each family's best trial:
    the test ROC promotion logged (``evaluation/roc.json``), else the ROC of its best epoch's
    validation probabilities."""
    from tuner.training.plots import BEST_PROBS

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            if not row["run_id"]:
                continue
            try:
                local = client.download_artifacts(row["run_id"],
                                                  f"{schema.EVALUATION_ARTIFACT}/roc.json", tmp)
                out[row["family"]] = ("test", json.loads(Path(local).read_text()))
                continue
            except Exception:  # noqa: BLE001 - not evaluated on test: use validation
                pass
            try:
                local = client.download_artifacts(row["run_id"], BEST_PROBS, tmp)
            except Exception:  # noqa: BLE001 - a trial without stored probabilities is not drawn
                continue
            with np.load(local, allow_pickle=False) as saved:
                probs, labels = saved["probs"], saved["labels"]
            names = class_names or [str(c) for c in range(probs.shape[1])]
            roc = {}
            for c, name in enumerate(names):
                fpr, tpr = metrics.roc_curve(probs[:, c], labels == c)
                roc[name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
            out[row["family"]] = ("validation", roc)
    return out


@dataclass(frozen=True)
class ChampionProbs:
    """The champion's test probabilities (N, C), labels (N,) and what it is."""

    label: str
    probs: np.ndarray
    labels: np.ndarray
    class_names: list[str]


def champion_probs(client, study, tracking_uri: str | None) -> ChampionProbs | None:
    """Test probabilities of the champion the study's promotion named (tag
    ``lenstune.champion``), read from its registered model's ``evaluation/``; None when the
    study has no champion or its evaluation is missing."""
    from mlflow.artifacts import download_artifacts

    named = study.data.tags.get(schema.CHAMPION_TAG, "")
    if not named:
        return None
    name = named.rsplit(" v", 1)[0]
    try:
        version = client.get_model_version_by_alias(name, schema.CHAMPION)
        with tempfile.TemporaryDirectory() as tmp:
            base = version.source.rstrip("/") + "/" + schema.EVALUATION_ARTIFACT
            folder = Path(download_artifacts(artifact_uri=base, dst_path=tmp,
                                             tracking_uri=tracking_uri))
            with np.load(folder / "probs.npz", allow_pickle=False) as saved:
                probs, labels = saved["probs"], saved["labels"]
            auc = json.loads((folder / "metrics.json").read_text()).get("auc", {})
    except Exception:  # noqa: BLE001 - no calibration figure rather than no report
        return None
    family = version.tags.get(schema.VERSION_FAMILY_TAG, "")
    names = list(auc) if len(auc) == probs.shape[1] else [str(c) for c in range(probs.shape[1])]
    return ChampionProbs(f"models:/{name}@{schema.CHAMPION} (version {version.version}"
                         f"{', ' + family if family else ''})", probs, labels, names)


def study_pictures(client, study_run_id: str, folder: Path) -> dict[str, list[Path]]:
    """The PNGs the study logged under ``robustness/`` and ``pareto/``, downloaded into
    ``folder``: {artifact folder: local files}; folders the study lacks are left out."""
    out = {}
    for kind in (schema.ROBUSTNESS_ARTIFACT, schema.PARETO_ARTIFACT):
        items = [a for a in client.list_artifacts(study_run_id, kind) if a.path.endswith(".png")]
        if items:
            out[kind] = [Path(client.download_artifacts(study_run_id, a.path, str(folder)))
                         for a in items]
    return out
