"""Registration of a study's hyper-ensemble (Wenzel et al. 2020) in the MLflow Model Registry.

``register_hyper_ensemble`` takes the top-k completed trials of a study (by best validation macro
AUC; ASHA-stopped trials are never members), rebuilds each from its checkpoint (weights only),
picks members greedily with replacement on validation NLL (k rounds, Caruana et al. 2004, via
:func:`tuner.uncertainty.greedy_hyper_ensemble`) and registers the weighted average of their
probabilities as a new version of the same registered model single networks go to. It is
evaluated on the test split like a single model, carries the alias ``ensemble`` and competes for
``champion`` by the same rule as any version (strictly higher test macro AUC than the champion
re-evaluated now on the same test split). ``challenger`` stays with single networks. Registering
the same study's ensemble of the same k again changes nothing.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from tuner import metrics
from tuner.registry.promotion import (
    PromotionResult,
    _eval_tags,
    default_model_name,
    create_version_once,
    find_version,
    load_trial,
    reevaluate_champion,
    settle_champion,
    within_limits,
)
from tuner.registry.evaluation import evaluate, write_evaluation
from tuner.models.io import ENSEMBLE_FAMILY, EnsembleMember, ModelConfig, predict_probs
from tuner.registry.pyfunc import save_registry_model
from tuner.tracking import schema
from tuner.tracking.store import mlflow_client, store_lock
from tuner.tracking.reader import (
    PromotionError,
    completed,
    find_study,
    list_trials,
    resolve_data_root,
)



def top_completed(trials, k: int) -> list:
    """The ``k`` completed trials with the best validation macro AUC, best first."""
    return sorted(completed(trials), key=lambda t: (-t.score, t.run_id))[:k]


def build_hyper_ensemble(trials, val, tracking_uri: str | None, work: Path):
    """Greedy selection among ``trials`` on ``val``. Returns (ensemble ModelConfig,
    WeightedEnsemble module, {run id: validation NLL of the member alone}, ensemble val NLL)."""
    from tuner.models.io import WeightedEnsemble
    from tuner.uncertainty.ensemble import greedy_hyper_ensemble

    loaded = [(config, net) for config, _, net in
              (load_trial(t, tracking_uri, val, work, "validation") for t in trials)]
    images, labels = val.images.numpy(), val.labels.numpy()
    val_probs = [predict_probs(net, images, cfg.img_size) for cfg, net in loaded]
    _, weights = greedy_hyper_ensemble(val_probs, labels, len(trials))
    chosen = [i for i in range(len(trials)) if weights[i] > 0]
    singles = {t.run_id: metrics.nll(p, labels) for t, p in zip(trials, val_probs)}
    if len(chosen) < 2:
        only = trials[chosen[0]]
        raise PromotionError(
            f"the greedy selection on validation NLL kept only trial {only.run_id} ({only.family}, "
            f"NLL {singles[only.run_id]:.4f}): no other of the top {len(trials)} completed trials "
            f"lowered it, so no ensemble is registered")
    first = loaded[chosen[0]][0]
    config = ModelConfig(
        family=ENSEMBLE_FAMILY, img_size=val.meta.image_size, in_chans=first.in_chans,
        class_names=first.class_names, dataset_digest=val.meta.digest,
        data_image_size=val.meta.image_size, native_image_size=val.meta.native_image_size,
        members=[EnsembleMember(config=loaded[i][0], weight=float(weights[i]),
                                run_id=trials[i].run_id) for i in chosen])
    module = WeightedEnsemble([loaded[i][1] for i in chosen], [loaded[i][0].img_size for i in chosen],
                              [weights[i] for i in chosen]).eval()
    ens_probs = sum(weights[i] * val_probs[i] for i in chosen) / sum(weights[i] for i in chosen)
    return config, module, singles, metrics.nll(ens_probs, labels)


def check_ensemble_limits(config: ModelConfig, trials, limits: dict[str, float]) -> None:
    """PromotionError when the ensemble's cost, summed over its members, is over a limit."""
    costs = {t.run_id: t.costs for t in trials}
    members = [m.run_id for m in config.members]
    for key, limit in limits.items():
        total = sum(costs[run_id].get(key, float("inf")) for run_id in members)
        if total > limit:
            raise PromotionError(
                f"the hyper-ensemble of {len(members)} members has {key} {total:g} (summed over "
                f"its members, which run one after the other) > {limit:g}: nothing registered; "
                "allowed: a smaller --ensemble-top-k, or a looser limit")


def _register(client, name: str, study_run_id: str, k: int, config: ModelConfig, module,
              split, candidate, probs, tags: dict[str, str], work: Path):
    """Log the ensemble model into the study run (``hyper_ensemble_top<k>/``), create a version."""
    from tuner.training.checkpoint import MODEL_FILE, save_checkpoint

    weights = save_checkpoint(work / "weights", model=module, config={}) / MODEL_FILE
    model_dir = save_registry_model(work / "model", config, weights, split.images[:2].numpy())
    write_evaluation(model_dir / schema.EVALUATION_ARTIFACT, candidate, probs, split.labels.numpy(),
                     config.class_names)
    artifact_path = f"hyper_ensemble_top{k}"
    client.log_artifacts(study_run_id, str(model_dir), artifact_path)
    source = client.get_run(study_run_id).info.artifact_uri.rstrip("/") + "/" + artifact_path
    return create_version_once(
        client, name, source, run_id=study_run_id, tags={**tags, **_eval_tags(candidate)},
        key_tag=schema.ENSEMBLE_KEY_TAG,
        description=f"hyper-ensemble of the top {k} completed trials of study {study_run_id}")


def register_hyper_ensemble(
    experiment: str,
    *,
    top_k: int,
    tracking_uri: str | None,
    data_root: Path | None = None,
    study_run_id: str | None = None,
    model_name: str | None = None,
    compete: bool = True,
    limits: dict[str, float] | None = None,
    echo: Callable[[str], None] = print,
) -> PromotionResult:
    """Build, evaluate and register a study's hyper-ensemble (see the module docstring).

    Args mirror :func:`tuner.registry.promotion.promote_champion`; ``top_k`` (>= 2): candidates and
    greedy rounds; ``compete``: let it take ``champion`` when it is better (else only the alias
    ``ensemble`` is set). The result's ``family`` is ``hyper_ensemble`` and its
    ``trial_run_id`` the study run (the version's source run). ``limits`` (``--max-latency-ms``,
    ``--max-params``: :func:`tuner.registry.promotion.promotion_limits`): members only from the
    trials within them, and the ensemble as a whole within them too, its cost summed over its
    members (they run one after the other).
    Raises:
        PromotionError: fewer than 2 completed trials (within the limits), a selection that
            keeps a single trial, an ensemble over the limits, or data that does not fit the
            models. Nothing is written to the registry then.
    """
    from tuner.data import load_split

    if top_k < 2:
        raise PromotionError(f"a hyper-ensemble needs top_k >= 2, got {top_k}")
    client = mlflow_client(tracking_uri)
    study = find_study(client, experiment, study_run_id)
    sid = study.info.run_id
    trials = list_trials(client, study.info.experiment_id, sid)
    if limits:
        trials = within_limits(trials, limits, echo)
    trials = top_completed(trials, top_k)
    if len(trials) < 2:
        raise PromotionError(f"a hyper-ensemble needs at least 2 completed trials; study {sid} "
                             f"has {len(trials)}" + (" within the limits" if limits else ""))
    root = resolve_data_root(study, data_root)
    val, test = load_split(root, "val"), load_split(root, "test")
    name = model_name or default_model_name(test.meta, root)
    key = f"{sid}:top{top_k}" + "".join(f":{k}<={v:g}" for k, v in sorted((limits or {}).items()))

    with tempfile.TemporaryDirectory(prefix="lenstune-ensemble-") as tmp:
        work = Path(tmp)
        config, module, singles, ens_nll = build_hyper_ensemble(trials, val, tracking_uri, work)
        check_ensemble_limits(config, trials, limits or {})
        candidate, probs = evaluate(module, config, test, f"hyper-ensemble of study {sid}")
        result = dict(model_name=name, study_run_id=sid, trial_run_id=sid, family=ENSEMBLE_FAMILY,
                      candidate=candidate)
        with store_lock(tracking_uri):  # one registration of an ensemble, also when run twice
            return _register_and_settle(client, tracking_uri, name, key, top_k, sid, config,
                                        module, test, candidate, probs, singles, ens_nll,
                                        compete, result, work, echo)


def _register_and_settle(client, tracking_uri, name: str, key: str, top_k: int, sid: str,
                         config, module, test, candidate, probs, singles, ens_nll: float,
                         compete: bool, result: dict, work: Path, echo) -> PromotionResult:
    """The registry half of :func:`register_hyper_ensemble`."""
    existing = find_version(client, name, schema.ENSEMBLE_KEY_TAG, key)
    if existing is not None and schema.DECISION_TAG in existing.tags:
        message = (f"{name} version {existing.version} already holds the top-{top_k} "
                   f"hyper-ensemble of study {sid}: {existing.tags[schema.DECISION_TAG]}; "
                   "nothing changed")
        echo(message)
        return PromotionResult(**result, version=str(existing.version), champion_version=None,
                               champion=None, decision="unchanged", message=message)
    champ_v, champ_eval = (reevaluate_champion(client, name, test, tracking_uri, work)
                           if compete else (None, None))
    members = [m.run_id for m in config.members]
    tags = {schema.MODEL_KIND_TAG: ENSEMBLE_FAMILY, schema.ENSEMBLE_KEY_TAG: key,
            schema.STUDY_RUN_TAG: sid,
            schema.ENSEMBLE_MEMBERS_TAG: json.dumps(members),
            schema.ENSEMBLE_WEIGHTS_TAG: json.dumps([round(m.weight, 6) for m in config.members]),
            schema.VERSION_FAMILY_TAG: ",".join(m.config.family for m in config.members),
            schema.DATASET_DIGEST_TAG: test.meta.digest,
            schema.VAL_NLL_TAG: f"{ens_nll:.6f}",
            schema.MEMBER_VAL_NLL_TAG: json.dumps({r: round(singles[r], 6) for r in members})}
    if existing is None:
        existing = _register(client, name, sid, top_k, config, module, test, candidate, probs,
                             tags, work)
    version = str(existing.version)
    client.set_registered_model_alias(name, schema.ENSEMBLE, version)
    if compete:
        decision, message = settle_champion(client, name, version, candidate, champ_v,
                                            champ_eval, study_run_id=sid,
                                            role="hyper-ensemble", echo=echo)
    else:
        decision = "kept"
        message = (f"{name} v{version} is the hyper-ensemble (alias {schema.ENSEMBLE}), test AUC "
                   f"{candidate.auc_macro:.4f}; champion not contested (--no-promote)")
        client.set_model_version_tag(name, version, schema.DECISION_TAG, message)
        echo(message)
    return PromotionResult(**result, version=version, champion_version=champ_v,
                           champion=champ_eval, decision=decision, message=message)

