"""Promotion of a study's best model to the MLflow Model Registry.

``promote_champion`` takes the newest study of an experiment (or a given one), picks the trial
with the best validation macro AUC among those that completed their budget (``stop_reason`` tag
``completed``; ASHA-stopped trials, tagged ``asha_stopped`` and ended KILLED, are excluded),
evaluates it on the held-out test split, registers it as a new version of ``lenstune-<preset>``,
sets the alias ``challenger`` on it, and moves ``champion`` only if it beats the current
champion's test macro AUC, both measured now on the same test split. The decision is printed and stored as the version tag
``lenstune.decision``; running it again for the same trial changes nothing.

The best trial of every family in the study is also evaluated on the test split and its test
metrics and ROC curves are logged into its trial run, so ``lenstune report`` works from MLflow alone.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal, NamedTuple

from pydantic import BaseModel

from tuner.models.io import ModelConfig, load_network
from tuner.progress import progress
from tuner.registry.evaluation import Evaluation, evaluate, write_evaluation
from tuner.registry import shifts
from tuner.registry.pyfunc import load_registered, save_registry_model
from tuner.tracking import schema
from tuner.tracking.store import mlflow_client, store_lock
from tuner.tracking.reader import (
    PromotionError,
    TrialSummary,
    best_completed,
    completed,
    find_study,
    list_trials,
    resolve_data_root,
)



class PromotionResult(BaseModel):
    """What ``promote_champion`` did. ``decision``: ``promoted`` (the new version is champion),
    ``kept`` (the champion stays, the new version is challenger) or ``unchanged`` (this trial
    was already registered and decided earlier)."""

    model_name: str
    version: str
    study_run_id: str
    trial_run_id: str
    family: str
    candidate: Evaluation
    champion_version: str | None
    champion: Evaluation | None
    decision: Literal["promoted", "kept", "unchanged"]
    message: str


def default_model_name(meta, data_root: Path) -> str:
    """``lenstune-<preset>`` for simulated data, ``lenstune-<folder name>`` otherwise."""
    base = meta.preset or Path(data_root).resolve().name
    return "lenstune-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", base)


def load_trial(trial: TrialSummary, tracking_uri: str | None, split, work: Path,
               split_name: str = "test"):
    """Download a trial's ``checkpoint/`` into ``work/<run id>`` and rebuild its network.
    The trial must have been trained on ``split``'s dataset (PromotionError otherwise).
    Returns (config, weights path, network in eval mode)."""
    import mlflow

    ckpt = Path(mlflow.artifacts.download_artifacts(
        run_id=trial.run_id, artifact_path=schema.CHECKPOINT_ARTIFACT, dst_path=str(work / trial.run_id),
        tracking_uri=tracking_uri))
    raw = json.loads((ckpt / "config.json").read_text())
    config = ModelConfig.from_checkpoint_config(raw).model_copy(
        update={"data_image_size": split.meta.image_size,
                "native_image_size": split.meta.native_image_size})
    if config.dataset_digest and config.dataset_digest != split.meta.digest:
        raise PromotionError(
            f"trial {trial.run_id} was trained on dataset {config.dataset_digest[:12]}... but the "
            f"{split_name} split given is from dataset {split.meta.digest[:12]}...; pass the "
            f"study's --data"
        )
    weights = ckpt / "model.safetensors"
    return config, weights, load_network(config, weights)


def _evaluate_trial(client, tracking_uri: str | None, trial: TrialSummary, split, work: Path):
    """Download a trial's checkpoint, evaluate it, log test metrics + ``evaluation/`` to its run
    (once per dataset digest). Returns (config, weights path, evaluation, evaluation folder)."""
    config, weights, network = load_trial(trial, tracking_uri, split, work)
    evaluation, probs = evaluate(network, config, split, f"trial {trial.run_id} ({trial.family})")

    folder = write_evaluation(work / trial.run_id / schema.EVALUATION_ARTIFACT, evaluation, probs,
                              split.labels.numpy(), config.class_names)
    run = client.get_run(trial.run_id)
    if run.data.tags.get(schema.TEST_DIGEST_TAG) != split.meta.digest:
        from mlflow.entities import Metric

        now = int(run.info.end_time or run.info.start_time)
        client.log_batch(trial.run_id, metrics=[
            Metric(k, v, now, 0) for k, v in evaluation.metrics().items()])
        client.log_artifacts(trial.run_id, str(folder), schema.EVALUATION_ARTIFACT)
        client.set_tag(trial.run_id, schema.TEST_DIGEST_TAG, split.meta.digest)
    return config, weights, evaluation, folder


def find_version(client, name: str, tag: str, value: str):
    """The version of registered model ``name`` whose tag ``tag`` is ``value``, or None (also
    when the registered model does not exist yet)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    return next((v for v in versions if v.tags.get(tag) == value), None)


def ensure_registered_model(client, name: str) -> None:
    """Create the registered model ``name`` unless it exists (or another process creates it
    at the same moment)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, description="lenstune champion/challenger models")
        except MlflowException:
            client.get_registered_model(name)  # made meanwhile by another promotion: fine


def create_version_once(client, name: str, source: str, *, run_id: str, tags: dict[str, str],
                        key_tag: str, description: str):
    """A new version of ``name`` holding what ``tags[key_tag]`` names (a trial run, an
    ensemble), unless another process registered the same at the same moment: then the
    lowest such version stays, this one is deleted, and the one that stays is returned. On an
    embedded store promotion runs under :func:`tuner.tracking.store.store_lock` and this never
    happens; a tracking server has no such lock."""
    ensure_registered_model(client, name)
    version = client.create_model_version(name, source, run_id=run_id, tags=tags,
                                          description=description)
    same = [v for v in client.search_model_versions(f"name = '{name}'")
            if v.tags.get(key_tag) == tags[key_tag]]
    first = min(same, key=lambda v: int(v.version), default=version)
    if str(first.version) != str(version.version):
        client.delete_model_version(name, version.version)
        return first
    return version


def _register(client, name: str, trial: TrialSummary, study_run_id: str, config: ModelConfig,
              weights: Path, eval_dir: Path, split, candidate: Evaluation, work: Path):
    """Log the registry model into the trial run (``registered_model/``) and create a version."""
    model_dir = save_registry_model(work / "model", config, weights, split.images[:2].numpy())
    shutil.copytree(eval_dir, model_dir / schema.EVALUATION_ARTIFACT)
    client.log_artifacts(trial.run_id, str(model_dir), schema.REGISTERED_MODEL_ARTIFACT)
    source = client.get_run(trial.run_id).info.artifact_uri.rstrip("/") + "/" + schema.REGISTERED_MODEL_ARTIFACT
    tags = {schema.TRIAL_RUN_TAG: trial.run_id, schema.STUDY_RUN_TAG: study_run_id,
            schema.VERSION_FAMILY_TAG: trial.family, schema.DATASET_DIGEST_TAG: split.meta.digest,
            schema.VERSION_VAL_AUC_TAG: f"{trial.val_auc:.6f}", **_eval_tags(candidate)}
    return create_version_once(
        client, name, source, run_id=trial.run_id, tags=tags, key_tag=schema.TRIAL_RUN_TAG,
        description=f"{trial.family} trial {trial.trial_id} of study {study_run_id}")


class Standing(NamedTuple):
    """What decides ``champion``: a measure, the candidate's value and the champion's (None
    without a champion). A study on the validation AUC compares test macro AUCs; a study on
    ``robust_auc`` compares the mean (or worst) macro AUC over the test shift suite."""

    measure: str
    candidate: float
    champion: float | None


def _decide(name: str, version: str, champ_version: str | None, champ_auc: float | None,
            new_auc: float, n_test: int, role: str = "challenger",
            measure: str = "test AUC") -> tuple[str, str]:
    """(decision, message): promote only a strictly higher ``measure``."""
    same = f"both on the same {n_test} test images"
    if champ_version is None:
        return "promoted", f"{name} v{version} is champion: {measure} {new_auc:.4f} (no previous champion)"
    if champ_version == version:
        return "kept", f"{name} v{version} is already champion"
    if new_auc > champ_auc:
        return "promoted", (f"{name} v{version} is the new champion: {measure} {new_auc:.4f} > "
                            f"{champ_auc:.4f} of v{champ_version}, {same}")
    return "kept", (f"{name} champion stays v{champ_version}: {measure} {champ_auc:.4f} >= "
                    f"{new_auc:.4f} of {role} v{version}, {same}")


def _champion(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, schema.CHAMPION)
    except MlflowException:
        return None


def _eval_tags(evaluation: Evaluation) -> dict[str, str]:
    tags = {k: f"{v:.6f}" for k, v in evaluation.metrics().items()}
    tags.update({"test_confusion": json.dumps(evaluation.confusion),
                 schema.TEST_DIGEST_TAG: evaluation.dataset_digest})
    return tags


def promotion_limits(max_latency_ms: float | None, max_params: int | None) -> dict[str, float]:
    """``--max-latency-ms`` and ``--max-params`` as :func:`within_limits`' limits."""
    from tuner.models.cost import LATENCY_MS, PARAMS

    return {k: float(v) for k, v in ((LATENCY_MS, max_latency_ms), (PARAMS, max_params))
            if v is not None}


def within_limits(trials: list[TrialSummary], limits: dict[str, float],
                  echo: Callable[[str], None] = print) -> list[TrialSummary]:
    """The completed trials whose measured costs are within every limit; says how many and
    what the limits left out. PromotionError when none is, naming the closest."""
    done = completed(trials)
    kept = [t for t in done if all(t.costs.get(k, float("inf")) <= v for k, v in limits.items())]
    said = " and ".join(f"{k} <= {v:g}" for k, v in limits.items())
    if not kept:
        closest = {k: min((t.costs.get(k, float("inf")) for t in done), default=float("inf"))
                   for k in limits}
        raise PromotionError(f"no completed trial has {said} (the smallest measured: "
                             + ", ".join(f"{k} {v:g}" for k, v in closest.items())
                             + "); nothing to promote")
    echo(f"promotion: {len(kept)} of {len(done)} completed trials have {said}; the best of them "
         "competes (in a multi-objective study a point of the Pareto front)")
    return kept


def promote_champion(
    experiment: str,
    *,
    tracking_uri: str | None,
    data_root: Path | None = None,
    study_run_id: str | None = None,
    model_name: str | None = None,
    echo: Callable[[str], None] = print,
    shift_floor: float | None = None,
    limits: dict[str, float] | None = None,
) -> PromotionResult:
    """Register the best completed trial of a study and decide the ``champion`` alias.

    Args:
        experiment: MLflow experiment name of the study.
        tracking_uri: MLflow tracking URI (also the registry URI); None = MLflow's default.
        data_root: dataset folder whose ``test`` split is used; None = the one the study recorded.
        study_run_id: the study's parent run; None = the newest study in the experiment.
        model_name: registered model name; None = ``lenstune-<preset or dataset folder name>``.
        echo: where the decision line goes.
        shift_floor: refuse a candidate whose worst macro AUC on the test shift suite is
            below this (:mod:`tuner.registry.shifts`, which also says how a study on
            ``robust_auc`` is decided).
        limits: cost -> the most a candidate may have (``{"latency_ms": 5, "params": 1e5}``,
            :data:`tuner.models.cost.COST_METRICS`): only trials within every limit compete
            (:func:`within_limits`).
    Raises:
        PromotionError: no study or completed trial, data that does not fit the models, or a
            candidate below the shift floor.
    """
    from tuner.data import load_split

    client = mlflow_client(tracking_uri)
    study = find_study(client, experiment, study_run_id)
    sid = study.info.run_id
    trials = list_trials(client, study.info.experiment_id, sid)
    if limits:
        trials = within_limits(trials, limits, echo)
    per_family = best_completed(trials)
    if not per_family:
        reasons = sorted({t.stop_reason for t in trials}) or ["no trials"]
        raise PromotionError(f"no trial of study {sid} completed its budget ({len(trials)} trials: "
                             f"{', '.join(reasons)}); nothing to promote")
    best = max(per_family.values(), key=lambda t: t.score)
    root = resolve_data_root(study, data_root)
    split = load_split(root, "test")
    name = model_name or default_model_name(split.meta, root)

    with tempfile.TemporaryDirectory(prefix="lenstune-promote-") as tmp:
        work = Path(tmp)
        results = {t.run_id: _evaluate_trial(client, tracking_uri, t, split, work)
                   for t in progress(per_family.values(), desc="test evaluation", unit="family")}
        config, weights, candidate, eval_dir = results[best.run_id]
        policy = shifts.shift_policy(study, shift_floor)
        suite = None
        if policy.active:  # the candidate under changed noise, seeing, depth, instrument
            what = f"trial {best.run_id} ({best.family})"
            suite = shifts.evaluate_suite(load_network(config, weights), config, root, what)
            shifts.log_suite(client, best.run_id, suite, f"{what}: macro AUC under shifts",
                             study_run_id=sid)
            shifts.check_floor(suite, policy, what)
        with store_lock(tracking_uri):  # one registration of a trial, also when run twice at once
            return _register_and_settle(client, tracking_uri, name, best, sid, config, weights,
                                        eval_dir, split, candidate, work, echo,
                                        policy=policy, suite=suite, root=root)


def _register_and_settle(client, tracking_uri, name: str, best: TrialSummary, sid: str,
                         config: ModelConfig, weights: Path, eval_dir: Path, split,
                         candidate: Evaluation, work: Path, echo, *,
                         policy: shifts.ShiftPolicy, suite, root: Path) -> PromotionResult:
    """The registry half of :func:`promote_champion`: register ``best`` unless a version holds
    it already, set ``challenger`` and decide ``champion`` (on the shift suite ``suite`` too
    when the ``policy`` says so)."""
    existing = find_version(client, name, schema.TRIAL_RUN_TAG, best.run_id)
    if existing is not None and schema.DECISION_TAG in existing.tags:
        message = (f"{name} version {existing.version} already holds trial {best.run_id}: "
                   f"{existing.tags[schema.DECISION_TAG]}; nothing changed")
        echo(message)
        return PromotionResult(model_name=name, version=str(existing.version), study_run_id=sid,
                               trial_run_id=best.run_id, family=best.family,
                               candidate=candidate, champion_version=None, champion=None,
                               decision="unchanged", message=message)

    # Re-evaluate the current champion on this very test split before writing anything.
    champ_v, champ_eval = reevaluate_champion(client, name, split, tracking_uri, work)
    champ_suite = (shifts.champion_suite(client, name, champ_v, root, tracking_uri, work)
                   if suite is not None and champ_v is not None else None)
    if existing is None:
        existing = _register(client, name, best, sid, config, weights, eval_dir, split,
                             candidate, work)
    version = str(existing.version)
    client.set_registered_model_alias(name, schema.CHALLENGER, version)
    standing = None
    if suite is not None:  # both on the same shift suite, recorded on both versions
        for key, value in shifts.version_tags(suite).items():
            client.set_model_version_tag(name, version, key, value)
        if champ_suite is not None:
            for key, value in shifts.version_tags(champ_suite).items():
                client.set_model_version_tag(name, champ_v, key, value)
        if policy.reduce is not None:
            standing = Standing(shifts.standing_measure(policy.reduce, len(suite.shifts)),
                                suite.score(policy.reduce),
                                None if champ_suite is None else champ_suite.score(policy.reduce))
    decision, message = settle_champion(client, name, version, candidate, champ_v, champ_eval,
                                        study_run_id=sid, echo=echo, standing=standing)
    return PromotionResult(
        model_name=name, version=version, study_run_id=sid, trial_run_id=best.run_id,
        family=best.family, candidate=candidate,
        champion_version=champ_v, champion=champ_eval, decision=decision, message=message)


def reevaluate_champion(client, name: str, split, tracking_uri: str | None,
                        work: Path) -> tuple[str | None, Evaluation | None]:
    """(version, evaluation now on ``split``) of the current champion of ``name``; (None, None)
    when there is none. Raises PromotionError when it cannot be evaluated on this split."""
    champ = _champion(client, name)
    if champ is None:
        return None, None
    model, config = load_registered(f"models:/{name}/{champ.version}", tracking_uri=tracking_uri,
                                    dst_dir=work / "champion")
    evaluation, _ = evaluate(model, config, split, f"champion {name} version {champ.version}")
    return str(champ.version), evaluation


def settle_champion(client, name: str, version: str, candidate: Evaluation, champ_v: str | None,
                    champ_eval: Evaluation | None, *, study_run_id: str, role: str = "challenger",
                    echo: Callable[[str], None] = print,
                    standing: Standing | None = None) -> tuple[str, str]:
    """Move ``champion`` to ``version`` if it beats the champion, both measured on the same
    split: by test macro AUC, or by ``standing`` (a robust study's shift-suite AUC); store the
    champion's numbers of today and the decision as version tags, and the champion's AUC, ECE
    and NLL as ``champion_test_*`` metrics of the study run. Returns (decision, message)."""
    if standing is None:
        standing = Standing("test AUC", candidate.auc_macro,
                            None if champ_eval is None else champ_eval.auc_macro)
    decision, message = _decide(name, version, champ_v, standing.champion, standing.candidate,
                                candidate.n_images, role, standing.measure)
    if decision == "promoted":
        client.set_registered_model_alias(name, schema.CHAMPION, version)
    if champ_eval is not None:
        for key, value in _eval_tags(champ_eval).items():  # champion's numbers of today
            client.set_model_version_tag(name, champ_v, key, value)
        client.set_model_version_tag(name, version, schema.COMPARED_WITH_TAG, f"v{champ_v}")
    client.set_model_version_tag(name, version, schema.DECISION_TAG, message)
    now_champion, numbers = (version, candidate) if decision == "promoted" else (champ_v, champ_eval)
    if numbers is not None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        client.log_batch(study_run_id, metrics=[
            Metric(f"champion_{k}", v, stamp, 0) for k, v in numbers.metrics().items()
            if k in ("test_auc_macro", "test_acc", "test_ece", "test_nll")])
        client.set_tag(study_run_id, schema.CHAMPION_TAG, f"{name} v{now_champion}")
    echo(message)
    return decision, message
