"""One study: the dataset once in the object store, one Ray Tune run per family under one
MLflow parent run, and a leaderboard at the end.

Several families are tuned as concurrent per-family sub-studies (each with its own search
space, searcher and ASHA budget, each a Ray Tune run driven from its own thread) sharing the
parent run and the cluster's trial slots, so the long last trials of one family do not leave
the other slots idle; ``--resume`` restores each unfinished family from
``<storage>/<study>/<family>`` and skips families the parent run marks as done.

Before any MLflow run exists the study joins (or starts) Ray, looks at the cluster
(:mod:`tuner.study.resources`), resolves ``gpus_per_trial``/``max_concurrent`` ``auto`` and refuses a
node-local Tune storage on a multi-node cluster.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuner.tracking import writer as tracking
from tuner.study.config import ConfigError, StudyConfig, flatten, join_storage
from tuner.study.faults import DiskError, disk_cause, stop_message
from tuner.study.resources import TrialResources
from tuner.study.strategies import get_strategy, search_plan
from tuner.tracking import schema

log = logging.getLogger(__name__)


@dataclass
class StudyResult:
    """What a finished study leaves: names, ids and the leaderboard (best first)."""

    study_name: str
    experiment: str
    experiment_id: str
    parent_run_id: str
    tracking_uri: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    leaderboard_csv: Path | None = None
    data_root: Path | None = None  # the dataset folder the study trained on (its test split is held out)

    def summary(self) -> str:
        lines = [f"study {self.study_name} (MLflow experiment {self.experiment!r}, "
                 f"parent run {self.parent_run_id})", tracking.format_leaderboard(self.rows)]
        if self.leaderboard_csv:
            lines.append(f"leaderboard: {self.leaderboard_csv}")
        lines.append(f"tracking URI: {self.tracking_uri}")
        from tuner.tracking.description import experiment_page

        if self.tracking_uri.startswith(("http://", "https://")):  # the server serves the UI
            lines.append(f"MLflow UI: {experiment_page(self.experiment_id, self.tracking_uri)}")
        else:
            lines.append(f"open the MLflow UI: mlflow ui --backend-store-uri {self.tracking_uri}, "
                         f"then {experiment_page(self.experiment_id)}")
        return "\n".join(lines)


def prepare_dataset(config: StudyConfig) -> Path:
    """The dataset root: ``--data`` as given, else the preset simulated once into
    ``<runs_dir>/data/<preset>-<size>px-n<N>-s<seed>`` and reused afterwards. Either way it is
    verified before any trial trains on it (:func:`tuner.data.store.verify_dataset`: every file
    opens, the content digests match ``meta.json``, no pixel is NaN or infinite; a marker skips
    the hashing while no file changed): DatasetError naming the file otherwise."""
    from tuner.data import DatasetError, ensure_simulated
    from tuner.data.store import verify_dataset

    if config.data is not None:
        root = config.data.expanduser().resolve()
        verify_dataset(root)
        return root
    from tuner.lensing import PRESETS

    if config.preset not in PRESETS:
        raise ConfigError(f"preset {config.preset!r} is not allowed; allowed: {', '.join(PRESETS)}")
    size = f"{config.img_size}px" if config.img_size else "native"
    name = f"{config.preset}-{size}-n{config.n_per_class}-s{config.seed}"
    if config.conditions is not None:  # a recipe of its own: another dataset
        import hashlib

        recipe = json.dumps(config.conditions, sort_keys=True).encode()
        name += "-c" + hashlib.sha256(recipe).hexdigest()[:8]
    root = config.resolved_runs_dir() / "data" / name
    try:
        root = ensure_simulated(root, config.preset, config.n_per_class, seed=config.seed,
                                img_size=config.img_size, conditions=_conditions(config))
    except OSError as exc:
        raise DatasetError(f"cannot simulate the dataset into {root}: {exc}") from exc
    verify_dataset(root)
    return root


def _conditions(config: StudyConfig):
    """The study's observing conditions (None: the preset's fixed values)."""
    if config.conditions is None:
        return None
    from tuner.lensing.conditions import ObservingConditions

    return ObservingConditions.from_mapping(config.conditions)


def load_shift_arrays(config: StudyConfig, data_root: Path, meta) -> dict[str, np.ndarray]:
    """The validation shift suite of a ``robust_auc`` study as arrays keyed for the trials
    (:func:`tuner.training.validation.shift_data_keys`): the ``val_shifts`` of the val split's
    systems, ``val_shift_n_per_class`` per class (at most the split's), simulated once into the
    dataset's ``shifts/`` folder (:func:`tuner.robustness.shifts.ensure_shift_suite`); empty for a
    study on ``val_auc``. ConfigError for a dataset that was not simulated (no preset to
    simulate its shifts from)."""
    if config.objective != "robust_auc":
        return {}
    if meta.preset is None:
        raise ConfigError(f"--objective robust_auc needs a simulated dataset: {data_root} was "
                          "imported, so there is no preset to simulate its shift suite from; "
                          "allowed: a dataset made by lenstune simulate (or --preset)")
    from tuner.robustness.shifts import SHIFTS, load_shift_suite
    from tuner.training.validation import shift_data_keys

    unknown = [name for name in config.val_shifts if name not in SHIFTS]
    if unknown:
        raise ConfigError(f"val_shifts {unknown[0]!r} is not allowed; allowed: {', '.join(SHIFTS)}")
    n_per_class = min(config.val_shift_n_per_class, *meta.counts["val"].values())
    suite = load_shift_suite(data_root, split="val", names=config.val_shifts,
                             n_per_class=n_per_class)
    arrays = {}
    for name, data in suite.items():
        images_key, labels_key = shift_data_keys(name)
        arrays[images_key] = np.ascontiguousarray(data.images.numpy(), dtype=np.float32)
        arrays[labels_key] = np.ascontiguousarray(data.labels.numpy(), dtype=np.int64)
    return arrays


def load_arrays(root: Path) -> tuple[dict[str, np.ndarray], Any]:
    """Train and val splits as contiguous in-memory numpy arrays, and the dataset's meta."""
    from tuner.data import load_split

    arrays, meta = {}, None
    for split in ("train", "val"):
        data = load_split(root, split)
        arrays[f"{split}_images"] = np.ascontiguousarray(data.images.numpy(), dtype=np.float32)
        arrays[f"{split}_labels"] = np.ascontiguousarray(data.labels.numpy(), dtype=np.int64)
        meta = data.meta
    return arrays, meta


def init_ray(config: StudyConfig) -> None:
    """Join the cluster named by RAY_ADDRESS (``ray job submit``) or start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
    else:
        ray.init(num_cpus=config.num_cpus, include_dashboard=False, log_to_driver=True)


def _latest_unfinished_study(client, experiment_id: str, families: list[str]) -> str | None:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{schema.KIND_TAG}` = '{schema.KIND_STUDY}' and "
                      f"tags.`{schema.FAMILIES_TAG}` = '{','.join(families)}' and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].data.tags[schema.STUDY_TAG] if runs else None


def study_name_for(config: StudyConfig, client, experiment_id: str | None) -> str:
    """``--study-name`` (refused without ``--resume`` when that study exists); on ``--resume``
    the latest unfinished study of these families; else ``<families>-<UTC time>-<4 random hex
    digits>`` (two studies started in the same second get different names), with ``all`` for
    every registered family (their names joined would make a folder name of some 150
    characters in the Tune storage)."""
    if config.study_name:
        if (not config.resume and experiment_id
                and tracking.find_study_run(client, experiment_id, config.study_name)):
            raise ConfigError(f"study {config.study_name!r} exists in experiment "
                              f"{config.experiment!r}; pass --resume to continue it, or another "
                              "--study-name")
        return config.study_name
    if config.resume:
        found = experiment_id and _latest_unfinished_study(client, experiment_id, config.families)
        if not found:
            raise ConfigError(f"--resume: no unfinished study of {','.join(config.families)} in "
                              f"experiment {config.experiment!r}; give --study-name")
        return found
    from tuner.models import list_families

    label = "all" if config.families == list(list_families()) else "-".join(config.families)
    return f"{label}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(2)}"


def _log_study_files(client, run_id: str, config: StudyConfig, spaces: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "study_config.json").write_text(config.model_dump_json(indent=2))
        space_dir = folder / "search_space"
        space_dir.mkdir()
        for family, space in spaces.items():
            (space_dir / f"{family}.json").write_text(
                json.dumps(space.model_dump(mode="json"), indent=2, default=str))
        client.log_artifacts(run_id, str(folder))


def _log_importances(client, run_id: str, family: str, space, results, objective: str) -> None:
    from tuner.study.search import optuna_importances

    trials = []
    for result in results:
        df = result.metrics_dataframe
        score = float(df[objective].max()) if df is not None and objective in df else None
        trials.append((result.config, score))
    importances = optuna_importances(space.param_space(), trials)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{family}.json"
        path.write_text(json.dumps(importances, indent=2))
        client.log_artifact(run_id, str(path), "param_importances")


def _log_trial_plots(client, experiment_id: str, parent_run_id: str, family: str,
                     class_names: list[str]) -> None:
    """ROC and confusion-matrix plots of every ``family`` trial that has its best epoch's
    probabilities but no plots yet: drawn once per trial by the driver, after the family's
    trials ended (also those a killed driver never drew). A failed drawing is tagged on the
    run, never a reason to fail the study."""
    from tuner.training.plots import log_best_epoch_plots

    for run in tracking.list_trial_runs(client, experiment_id, parent_run_id):
        if run.data.tags.get(schema.FAMILY_TAG) != family:
            continue
        try:
            log_best_epoch_plots(client, run.info.run_id, class_names,
                                 title=f"{family} epoch {run.data.tags.get('best_epoch', '?')}")
        except Exception as exc:
            client.set_tag(run.info.run_id, schema.PLOTS_ERROR_TAG, str(exc)[:500])


def known_trials(results) -> Callable[[str], bool] | None:
    """Whether a Tune trial id belongs to a trial of this ResultGrid: the id a result reports,
    else its folder (``<trainable>_<trial id>``, the id's own underscores kept); None when a
    result has neither."""
    ids, folders = set(), []
    for result in results:
        trial_id = (result.metrics or {}).get("trial_id")
        if trial_id:
            ids.add(str(trial_id))
        elif result.path:
            folders.append(str(result.path).rstrip("/").rsplit("/", 1)[-1])
        else:
            return None
    return lambda trial_id: trial_id in ids or any(f.endswith("_" + trial_id) for f in folders)


def _delete_orphans(client, experiment_id: str, parent_run_id: str, family: str, results,
                    path: str, trainable_name: str) -> None:
    """Remove what a trial the restored study never knew left: its MLflow run (soft-deleted,
    tagged) and its folder (``<trainable_name>_<trial id>``) in the study's storage at
    ``path``."""
    from tuner.study.tune_state import delete_orphan_trial_folders

    in_results = known_trials(results)
    if in_results is None:  # never guess: an unknown id could be a real trial's run
        return
    finished = tracking.finished_trial_ids(client, experiment_id, parent_run_id, family)

    def known(trial_id: str) -> bool:  # finished trials are kept whatever Tune's state says
        return in_results(trial_id) or trial_id in finished

    orphans = tracking.delete_orphan_trial_runs(client, experiment_id, parent_run_id, family,
                                                known)
    if orphans:
        client.set_tag(parent_run_id, schema.ORPHAN_RUNS_DELETED_PREFIX + family,
                       ",".join(orphans))
    folders = delete_orphan_trial_folders(path, known, trainable_name)
    if folders:
        client.set_tag(parent_run_id, schema.ORPHAN_FOLDERS_DELETED_PREFIX + family,
                       ",".join(folders))


def _record_unseen_failures(client, ctx, results) -> None:
    """Give a run to every trial that Tune ended in error before the trial ever started (so no
    run was opened for it: a worker that could not be handed over, a trial that could not be
    restored), ended ``failed`` with the error: no trial of a study goes unrecorded."""
    from tuner.study.search import TRIAL_FOLDER_PREFIX, describe_error

    for result in results:
        if result.error is None:
            continue
        trial_id = (result.metrics or {}).get("trial_id") or str(result.path).rstrip("/").rsplit(
            "/", 1)[-1].removeprefix(TRIAL_FOLDER_PREFIX + "_")
        if tracking.find_trial_run(client, ctx.experiment_id, ctx.parent_run_id, trial_id):
            continue
        run_id = tracking.open_trial_run(
            client, experiment_id=ctx.experiment_id, parent_run_id=ctx.parent_run_id,
            study_name=ctx.study_name, trial_id=trial_id, family=ctx.family,
            params={**flatten(result.config or {}), "family": ctx.family},
            dataset={"name": ctx.dataset_name, "digest": ctx.dataset_digest,
                     "source": ctx.dataset_source, "preset": ctx.dataset_preset})
        tracking.end_trial_run(client, run_id, schema.STOP_FAILED, describe_error(result.error))


def run_family(config: StudyConfig, family: str, space, *, refs: dict, meta, data_root: Path,
               study_name: str, tracking_uri: str, experiment_id: str, parent_run_id: str,
               resources: TrialResources, warm_points: list[dict] | None = None) -> None:
    """Tune one family (fresh, or restored on ``--resume``) to the end of its budget."""
    from ray import tune

    from tuner.study.search import (TRIAL_FOLDER_PREFIX, TrialStopCallback, build_tuner, can_restore,
                                    checkpoint_epochs, fail_unfinished_optuna_trials,
                                    optuna_study_name, register_family_trainable, restore_tuner)
    from tuner.training.fresh import fresh_spec
    from tuner.training.trainable import TrialContext, train_trial

    strategy = get_strategy(config.strategy)
    max_epochs = config.max_epochs or space.budget.max_epochs
    ctx = TrialContext(
        family=family, img_size=config.input_size or space.img_size or meta.image_size, class_names=list(meta.class_names),
        max_epochs=max_epochs, seed=config.seed, cpus_per_trial=resources.cpus,
        rungs=checkpoint_epochs(strategy, space, max_epochs),
        compile=config.compile,
        study_name=study_name, tracking_uri=tracking_uri, experiment_id=experiment_id,
        parent_run_id=parent_run_id, dataset_name=data_root.name, dataset_digest=meta.digest,
        dataset_source=str(data_root), dataset_preset=str(meta.preset),
        study_config=config.model_dump(mode="json"),
        outbox_dir=str(config.outbox_dir(study_name)),
        objective=schema.OBJECTIVES[config.objective], robust_reduce=config.robust_reduce,
        val_shifts=config.val_shifts if config.objective == "robust_auc" else [],
        fresh=fresh_spec(meta, meta.counts["train"]) if config.train_data == "fresh" else None,
        cost_metrics=config.cost_metrics())
    trainable = register_family_trainable(
        tune.with_parameters(train_trial, data=refs, context=ctx.model_dump()), family,
        resources.cpus, resources.gpus)
    storage = join_storage(config.resolved_storage(), study_name)
    path = join_storage(storage, family)
    restored = config.resume and can_restore(path)
    if config.extend and not restored:
        raise ConfigError(f"--extend: study {study_name!r} has no saved search of family "
                          f"{family!r} under {path}; allowed: a study this storage holds")
    if restored:
        from tuner.tracking.store import mlflow_client

        finished = tracking.finished_trial_ids(mlflow_client(tracking_uri), experiment_id,
                                               parent_run_id, family)
        if config.extend:
            from tuner.study.tune_state import extend_search_state

            total = extend_search_state(path, config.extend)
            mlflow_client(tracking_uri).set_tag(
                parent_run_id, schema.EXTENDED_PREFIX + family,
                f"+{config.extend} trials (now {total})")
            log.info("%s: %d more trials, %d in all", family, config.extend, total)
        tuner = restore_tuner(path, trainable, resources.cpus, resources.gpus,
                              finished_trials=finished)
        stopper = _restored_stopper(tuner)
        if config.extend and stopper is not None and stopper.reason:
            # the study-level stop that ended it: the new trials count afresh (a spent device
            # budget stays spent, and stops the family again at once)
            stopper.reason, stopper.message, stopper.since_best = None, "", 0
    else:
        from tuner.study.progress import StudyProgress
        from tuner.study.stopping import StudyStopper

        plan = search_plan(strategy, space, samples=config.samples, max_epochs=max_epochs,
                           grid_points=config.grid_points, tpe_told=config.tpe_told,
                           asha_rule=config.asha_rule)
        samples = plan.samples
        if samples < config.samples:
            log.info("%s: the grid has %d points (--grid-points %d): %d trials, not %d",
                     family, samples, config.grid_points, samples, config.samples)
        stopper = StudyStopper(
            ctx.objective, plateau=config.plateau, budget_device_hours=config.budget_gpu_hours,
            device_share=resources.gpus or resources.cpus,
            device_unit="GPU" if resources.gpus else "CPU", time_budget_s=config.time_budget_s)
        progress = StudyProgress(family, config.families.index(family) + 1,
                                 len(config.families), samples, max_epochs,
                                 objective=ctx.objective, strategy=strategy, stopper=stopper)
        callback = TrialStopCallback(tracking_uri, experiment_id, parent_run_id, max_epochs, {
            "study_name": study_name, "family": family,
            "dataset": {"name": ctx.dataset_name, "digest": ctx.dataset_digest,
                        "source": ctx.dataset_source, "preset": ctx.dataset_preset},
            "params": {"dataset_digest": ctx.dataset_digest, "dataset_preset": ctx.dataset_preset,
                       "img_size": ctx.img_size, "objective": ctx.objective}},
            outbox_dir=ctx.outbox_dir, outage_limit_s=config.tracking_outage_limit_s,
            state_path=path, strategy=strategy, stopper=stopper)
        tuner = build_tuner(
            trainable, space.param_space(), plan, name=family, storage_path=storage,
            seed=config.seed, max_concurrent=resources.max_concurrent,
            cpus_per_trial=resources.cpus, gpus_per_trial=resources.gpus,
            callbacks=[callback, progress],
            verbose=1 if log.isEnabledFor(logging.INFO) else 0,  # Tune's table: not with --quiet
            max_failures=config.max_failures, metric=ctx.objective, stopper=stopper,
            points_to_evaluate=warm_points, optuna_storage=config.resolved_optuna_storage(),
            objectives=config.parsed_objectives())
    results = tuner.fit()
    from tuner.tracking.store import mlflow_client

    client = mlflow_client(tracking_uri)
    _record_unseen_failures(client, ctx, results)
    if restored:
        _delete_orphans(client, experiment_id, parent_run_id, family, results, path,
                        TRIAL_FOLDER_PREFIX)
    _record_study_stop(client, parent_run_id, family, stopper)
    fail_unfinished_optuna_trials(config.resolved_optuna_storage(),
                                  optuna_study_name(storage, family))
    if len(config.parsed_objectives()) > 1:
        _log_pareto_front(client, config, experiment_id, parent_run_id, family)
    _log_trial_plots(client, experiment_id, parent_run_id, family, list(meta.class_names))
    try:
        _log_importances(client, parent_run_id, family, space, results, ctx.objective)
    except Exception as exc:  # importances are a report, never a reason to fail the study
        client.set_tag(parent_run_id, schema.IMPORTANCES_ERROR_PREFIX + family, str(exc)[:500])
    client.set_tag(parent_run_id, schema.DONE_TAG_PREFIX + family, "true")


def _without_password(url: str) -> str:
    """A database URL as it may be shown: its password replaced by ***."""
    import re

    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def open_optuna_storage(config: StudyConfig) -> None:
    """Open the searchers' Optuna storage once, in this thread, before the families' threads
    do (its tables are made here); ConfigError naming the URL when it cannot be opened."""
    from tuner.study.search import optuna_storage

    url = config.resolved_optuna_storage()
    try:
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        optuna_storage(url)
    except Exception as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ConfigError(f"the Optuna storage {_without_password(url)} cannot be opened: "
                          f"{first[:300]}; allowed: sqlite:///<file> or a database URL "
                          "(postgresql://user:password@host/db, or postgresql://user@host/db "
                          "with the password in ~/.pgpass) that this machine can reach "
                          "(--optuna-storage)") from None


def warm_start_all(config: StudyConfig, spaces: dict, tracking_uri: str) -> dict[str, list[dict]]:
    """Per family, the earlier configurations its searcher begins with (--warm-start);
    ConfigError (before Ray starts or anything is written) when there are none or they do not
    fit the family's search space."""
    from tuner.study.warm_start import read_earlier_trials, warm_start_points
    from tuner.tracking.store import mlflow_client

    if get_strategy(config.strategy).sampler in ("grid", "variants", "bohb"):
        raise ConfigError(f"--warm-start seeds an Optuna searcher; --strategy {config.strategy} has "
                          "none; allowed: --strategy asha-tpe, asha-gp, random, nsga2 or mo-tpe")
    client = mlflow_client(tracking_uri)
    objective = schema.OBJECTIVES[config.objective]
    return {family: warm_start_points(
        spaces[family], read_earlier_trials(client, config.warm_start, family, objective),
        source=config.warm_start, top=min(config.warm_start_top, config.samples))
        for family in config.families}


def _log_pareto_front(client, config: StudyConfig, experiment_id: str, parent_run_id: str,
                      family: str) -> None:
    """The family's completed trials against the study's objectives, and which of them form
    the Pareto front: ``pareto/<family>.csv`` and ``.png`` on the study run (the first
    objective is each trial's best value over its epochs, the one promotion uses)."""
    from tuner.study.objectives import write_front

    objectives = config.parsed_objectives()
    rows = []
    for run in tracking.list_trial_runs(client, experiment_id, parent_run_id):
        metrics, tags = run.data.metrics, run.data.tags
        values = [metrics.get(schema.best_of(objectives[0].metric))] + [
            metrics.get(o.metric) for o in objectives[1:]]
        if (tags.get(schema.FAMILY_TAG) == family and None not in values
                and tags.get(schema.STOP_REASON_TAG) == schema.STOP_COMPLETED):
            rows.append({"trial_id": tags.get(schema.TRIAL_ID_TAG, ""), "run_id": run.info.run_id,
                         **{o.metric: v for o, v in zip(objectives, values)}})
    if not rows:
        return
    out = config.resolved_runs_dir() / "pareto" / parent_run_id
    for path in write_front(rows, objectives, out, family):
        client.log_artifact(parent_run_id, str(path), "pareto")


def check_extension(config: StudyConfig, client, experiment, study_name: str, spaces: dict) -> None:
    """ConfigError unless ``--extend`` names a study of this experiment with the same families
    and, for each, the search space it ran with (its ``search_space/<family>.json``)."""
    run = experiment and tracking.find_study_run(client, experiment.experiment_id, study_name)
    if not run:
        raise ConfigError(f"--extend: no study {study_name!r} in experiment {config.experiment!r}; "
                          "allowed: the name of an earlier study (printed above its leaderboard)")
    had = run.data.tags.get(schema.FAMILIES_TAG, "")
    if had != ",".join(config.families):
        raise ConfigError(f"--extend: study {study_name!r} tuned {had}, not "
                          f"{','.join(config.families)}; allowed: --family {had}")
    with tempfile.TemporaryDirectory() as tmp:
        for family, space in spaces.items():
            local = client.download_artifacts(run.info.run_id, f"search_space/{family}.json", tmp)
            before = json.loads(Path(local).read_text())
            now = json.loads(json.dumps(space.model_dump(mode="json"), default=str))
            differ = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            if differ:
                raise ConfigError(
                    f"--extend: the search space of family {family!r} differs from the one study "
                    f"{study_name!r} ran with (in {', '.join(differ)}); allowed: the same "
                    "--profile and search_spaces/ file, or a new study with --warm-start "
                    f"{study_name}")


def check_strategy(config: StudyConfig, spaces: dict) -> None:
    """ConfigError (before Ray starts) where the strategy needs what a family's search space
    does not declare: PBT and PB2 its ``pbt.mutable`` hyperparameters (PB2: numeric ones);
    and a BOHB study to ``--resume`` or ``--extend``: Ray restores HyperBand's scheduler
    without its brackets, and the restored trials then wait in brackets that never fill."""
    strategy = get_strategy(config.strategy)
    if strategy.scheduler == "hyperband" and config.resume:
        raise ConfigError(f"--strategy {strategy.name}: a study cannot be resumed or extended "
                          "(Ray does not save HyperBand's brackets); allowed: a new study, or "
                          "a strategy whose studies resume (asha-tpe, asha-gp, random, grid, "
                          "pbt, pb2, nsga2, mo-tpe)")
    if not strategy.population:
        return
    problems = [p for p in ((space.pb2_problem() if strategy.scheduler == "pb2"
                             else space.pbt_problem()) for space in spaces.values()) if p]
    if problems:
        raise ConfigError(f"--strategy {strategy.name} needs each family's mutable "
                          "hyperparameters, searched: " + "; ".join(problems) + "; allowed: "
                          "families whose pbt section names searched train hyperparameters"
                          + (" (numeric ones)" if strategy.scheduler == "pb2" else "")
                          + ", or another strategy")


def _restored_stopper(tuner):
    """The StudyStopper Tune restored with the study's run config (Tune keeps it in the saved
    tuner; its public API does not hand it back), or None."""
    from tuner.study.stopping import StudyStopper

    run_config = getattr(getattr(tuner, "_local_tuner", None), "_run_config", None)
    stopper = getattr(run_config, "stop", None)
    return stopper if isinstance(stopper, StudyStopper) else None


def _record_study_stop(client, parent_run_id: str, family: str, stopper) -> None:
    """The family's device time, and why the study stopped it early if it did, on the study
    run (tag ``lenstune.study_stop.<family>``, metric ``<family>.<gpu|cpu>_hours``)."""
    if stopper is None:
        return
    summary = stopper.summary()
    if "stop" in summary:
        client.set_tag(parent_run_id, schema.STUDY_STOP_PREFIX + family, summary["stop"][:5000])
        log.info("%s: the study stopped the search early: %s", family, summary["stop"])
    for key, value in summary.items():
        if key.endswith("_hours"):
            client.log_metric(parent_run_id, f"{family}.{key}", float(value))


def resolve_study_resources(config: StudyConfig, spaces: dict) -> dict[str, TrialResources]:
    """Per-family trial resources on the connected Ray cluster; ConfigError when the Tune
    storage is node-local on a multi-node cluster."""
    from tuner.study.resources import check_storage_reachable, inspect_cluster, resolve_resources

    view = inspect_cluster()
    problem = check_storage_reachable(config.resolved_storage(), view)
    if problem:
        raise ConfigError(problem)
    return {family: resolve_resources(
        view, cpus=config.cpus_per_trial, gpus=config.gpus_per_trial,
        max_concurrent=config.max_concurrent, profile=config.profile,
        declared_share=spaces[family].gpus_per_trial) for family in config.families}


def run_families(families: list[str], run_one: Callable[[str], None]) -> None:
    """``run_one(family)`` for every family, concurrently (one thread each, so the families
    share the cluster's trial slots); the first error is raised once all have ended. A single
    family runs in this thread, where Ray Tune can catch Ctrl+C."""
    if len(families) == 1:
        run_one(families[0])
        return
    errors: list[BaseException] = []

    def target(family: str) -> None:
        try:
            run_one(family)
        except BaseException as exc:  # re-raised in the caller's thread below
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(f,), name=f"tune-{f}", daemon=True)
               for f in families]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def study_folders(config: StudyConfig) -> dict[Path, str]:
    """Where the study keeps files on this machine (path -> role): the runs folder, a local
    Tune storage, the folder of an embedded sqlite store."""
    folders = {config.resolved_runs_dir(): "runs folder"}
    storage = config.resolved_storage()
    if "://" not in storage:
        folders.setdefault(Path(storage), "Tune storage")
    uri = config.resolved_tracking_uri()
    if uri.startswith("sqlite:///"):
        folders.setdefault(Path(uri[len("sqlite:///"):]).parent, "MLflow store folder")
    return folders


def check_folders(config: StudyConfig) -> None:
    """ConfigError unless the study can write to each of :func:`study_folders`."""
    from tuner.study.faults import check_writable

    for folder, what in study_folders(config).items():
        problem = check_writable(folder, what)
        if problem:
            raise ConfigError(problem)


def _close_after_disk_error(client, experiment_id: str, parent_run_id: str, cause: str) -> None:
    """End the study's open runs after a full or read-only disk stopped it (trial runs
    failed, the study run KILLED; ``--resume`` opens them again). Where the MLflow store is on
    that disk too, nothing can be written: ``--resume`` ends them once there is room."""
    try:
        tracking.close_open_trial_runs(client, experiment_id, parent_run_id,
                                       f"the study stopped: {cause}")
        tracking.finish_study_run(client, parent_run_id, "KILLED")
    except Exception:  # the store is on the full disk: nothing more to do now
        pass


def run_study(config: StudyConfig, echo: Callable[[str], None] = log.info) -> StudyResult:
    """Run (or resume) a study as described in the module docstring."""
    from tuner.tracking.store import mlflow_client

    from tuner.study.search_space import load_search_space

    spaces = {family: load_search_space(family, config.profile) for family in config.families}
    check_folders(config)
    tracking_uri = config.resolved_tracking_uri()
    tracking.check_tracking_uri(tracking_uri)
    tracking.bound_request_retries(config.tracking_outage_limit_s)
    if config.extend:  # an extension continues the study: restored like --resume
        config = config.model_copy(update={"resume": True})
    check_strategy(config, spaces)
    warm = warm_start_all(config, spaces, tracking_uri) if config.warm_start else {}
    from tuner.study.search import check_storage

    check_storage(config.resolved_storage())
    data_root = prepare_dataset(config)
    arrays, meta = load_arrays(data_root)
    if config.train_data == "fresh" and meta.preset is None:
        raise ConfigError(f"--train-data fresh needs a simulated dataset: {data_root} was "
                          "imported; allowed: a dataset made by lenstune simulate (or --preset)")
    arrays.update(load_shift_arrays(config, data_root, meta))

    import ray

    init_ray(config)
    resources = resolve_study_resources(config, spaces)
    echo(f"Tune storage: {config.resolved_storage()}")
    echo(f"MLflow: {tracking_uri} (artifacts: "
         f"{config.local_artifact_root() or 'kept by the tracking server'})")
    for family, res in resources.items():
        echo(f"{family}: {res.cpus:g} CPU + {res.gpus:g} GPU per trial, up to "
             f"{res.max_concurrent} at once ({res.reason or 'as configured'})")

    artifacts = config.local_artifact_root()
    if artifacts is not None:
        config.resolved_runs_dir().mkdir(parents=True, exist_ok=True)
    open_optuna_storage(config)
    client = mlflow_client(tracking_uri)
    existing = client.get_experiment_by_name(config.experiment)
    study_name = study_name_for(config, client, existing.experiment_id if existing else None)
    if config.extend:
        check_extension(config, client, existing, study_name, spaces)
    experiment_id = tracking.ensure_experiment(client, config.experiment,
                                               str(artifacts) if artifacts else None)
    dataset = tracking.DatasetInfo(data_root.name, meta.digest, str(data_root), str(meta.preset))
    params = {k: v for k, v in flatten(config.model_dump(mode="json")).items() if k != "resume"}
    params["families"] = ",".join(config.families)
    params["storage_resolved"] = config.resolved_storage()
    params["optuna_storage_resolved"] = _without_password(config.resolved_optuna_storage())
    for family, res in resources.items():
        params.update(res.as_params(family))
    parent_run_id = tracking.start_study_run(client, experiment_id, study_name, params, dataset,
                                             resume=config.resume)
    from tuner.tracking.description import describe_study, study_description

    describe_study(client, parent_run_id, study_description(
        study_name, families=config.families, profile=config.profile, samples=config.samples,
        max_epochs=config.max_epochs, dataset_name=dataset.name, dataset_source=dataset.source,
        preset=dataset.preset, image_size=meta.image_size, digest=meta.digest))
    client.set_tag(parent_run_id, schema.FAMILIES_TAG, ",".join(config.families))
    client.set_tag(parent_run_id, schema.OBJECTIVE_TAG, schema.OBJECTIVES[config.objective])
    client.set_tag(parent_run_id, schema.STRATEGY_TAG, get_strategy(config.strategy).summary)
    for family, points in warm.items():
        client.set_tag(parent_run_id, schema.WARM_START_PREFIX + family,
                       f"{len(points)} configuration(s) of {config.warm_start} first")
    for family, res in resources.items():  # tags: a resumed study may resolve them anew
        client.set_tag(parent_run_id, schema.RESOURCES_TAG_PREFIX + family,
                       f"{res.cpus:g} CPU + {res.gpus:g} GPU per trial, max {res.max_concurrent} "
                       f"at once; {res.reason or 'as configured'}")
    parent_tags = client.get_run(parent_run_id).data.tags
    if config.extend:  # its families are searched again, from where they ended
        for family in config.families:
            if parent_tags.get(schema.DONE_TAG_PREFIX + family):
                client.delete_tag(parent_run_id, schema.DONE_TAG_PREFIX + family)
        parent_tags = client.get_run(parent_run_id).data.tags
    if not config.resume or schema.FILES_LOGGED_TAG not in parent_tags:
        _log_study_files(client, parent_run_id, config, spaces)
        client.set_tag(parent_run_id, schema.FILES_LOGGED_TAG, "true")

    from tuner.tracking.outbox import replay_outbox

    outbox = config.outbox_dir(study_name)
    sent, _ = replay_outbox(client, outbox)  # what an interrupted run of this study could not send
    if sent:
        echo(f"sent {sent} write(s) that waited in {outbox} for the tracking server")
    refs = {name: ray.put(array) for name, array in arrays.items()}
    del arrays
    pending = [f for f in config.families if parent_tags.get(schema.DONE_TAG_PREFIX + f) != "true"]
    try:
        run_families(pending, lambda family: run_family(
            config, family, spaces[family], refs=refs, meta=meta, data_root=data_root,
            study_name=study_name, tracking_uri=tracking_uri, experiment_id=experiment_id,
            parent_run_id=parent_run_id, resources=resources[family],
            warm_points=warm.get(family)))
    except Exception as exc:
        cause = exc.cause if isinstance(exc, DiskError) else disk_cause(exc)
        if cause is None:
            raise
        _close_after_disk_error(client, experiment_id, parent_run_id, cause)
        raise DiskError(stop_message(cause, study_folders(config)), cause) from exc
    # Every trial has ended: send what its trials left on this machine, then end any run whose
    # end was lost with a worker node while the server was away.
    replay_outbox(client, outbox)
    tracking.close_open_trial_runs(client, experiment_id, parent_run_id,
                                   "its end was never recorded (the trial's node or the tracking "
                                   "server went away)")

    rows = tracking.leaderboard_rows(tracking.list_trial_runs(client, experiment_id, parent_run_id))
    board_dir = config.resolved_runs_dir() / "leaderboards" / study_name
    csv_path, png_path = tracking.write_leaderboard(rows, board_dir)
    client.log_artifact(parent_run_id, str(csv_path))
    client.log_artifact(parent_run_id, str(png_path))
    failures = [r for r in rows if r[schema.STOP_REASON_TAG] == schema.STOP_FAILED]
    if failures:  # the table of failed trials and why, on the study run
        client.log_text(parent_run_id, "\n".join(
            ["family,trial_id,run_id,reason"] + [
                f"{r['family']},{r['trial_id']},{r['run_id']},"
                f"\"{r[schema.STOP_MESSAGE_TAG].replace(chr(34), chr(39))}\"" for r in failures]) + "\n",
            "failures.csv")
    if rows:
        now = int(time.time() * 1000)
        best = {schema.BEST_OBJECTIVE: rows[0][schema.BEST_OBJECTIVE],
                schema.best_of(rows[0]["objective"]): rows[0]["best_objective"]}
        client.log_batch(parent_run_id, metrics=[tracking.Metric(k, v, now, 0)
                                                 for k, v in best.items()])
        client.set_tag(parent_run_id, "best_trial_run_id", rows[0]["run_id"])
    tracking.finish_study_run(client, parent_run_id)
    return StudyResult(study_name, config.experiment, experiment_id, parent_run_id, tracking_uri,
                       rows, csv_path, data_root)
