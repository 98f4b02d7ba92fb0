"""Assembly of one family's Ray Tune study: seeded Optuna TPE behind a concurrency limit,
ASHA on ``val_auc_macro`` (max) with the search space's budget, per-trial resources,
failure and checkpoint policy, a fail-fast check of the storage, restore of an interrupted
study, and the driver-side callback that records why each trial stopped in MLflow.
"""

from __future__ import annotations

import logging

import math
import threading
from typing import Any, Callable

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from tuner.study.asha import (EqualFidelityOptunaSearch, RankASHAScheduler, RestorableOptunaSearch,
                        reported_epoch)
from tuner.study.config import EPOCH_ATTR, METRIC, MODE
from tuner.tracking import schema


log = logging.getLogger(__name__)


class TrialStopCallback(tune.Callback):
    """Ends each trial's MLflow run with the right ``stop_reason`` from the driver.

    A trial that ASHA stops never runs past its last ``tune.report``, so it cannot end its
    own run; Optuna even sees it as COMPLETE. Here a trial that completes with fewer epochs
    than ``max_epochs`` is ``asha_stopped`` (run KILLED), one that errors is ``failed``
    (run FAILED, error message tagged). Picklable: Tune saves it with the study for restore.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, max_epochs: int,
                 run_fields: dict[str, Any] | None = None):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.max_epochs = max_epochs
        # study_name, family, dataset (DatasetInfo fields), params: what a trial run is made of
        self.run_fields = run_fields

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        """Every trial has its MLflow run from the moment Ray starts it, made here by the
        driver, so a trial whose worker dies before it logs anything is still recorded (and
        then ended with the cause). The trainable finds and reuses the run."""
        if not self.run_fields:
            return
        from tuner.study.config import flatten
        from tuner.tracking import writer
        from tuner.tracking.store import mlflow_client

        fields = self.run_fields
        try:
            writer.start_trial_run(
                mlflow_client(self.tracking_uri), experiment_id=self.experiment_id,
                parent_run_id=self.parent_run_id, study_name=fields["study_name"],
                trial_id=trial.trial_id, family=fields["family"],
                run_name=f"{fields['family']}-{trial.trial_id}",
                params={**flatten(trial.config), "family": fields["family"], **fields["params"]},
                dataset=writer.DatasetInfo(**fields["dataset"]), reuse_status=False)
        except Exception as exc:  # a tracking hiccup must not stop the study: the trainable retries
            log.warning("could not open the MLflow run of trial %s: %s", trial.trial_id, exc)

    def _end(self, trial, stop_reason: str, message: str = "") -> None:
        """Tag ``stop_reason`` and end the trial's MLflow run (found by the run id the trial
        reported, else by its trial id); nothing when the trial never opened a run."""
        from tuner.tracking.store import mlflow_client

        from tuner.tracking.writer import end_trial_run, find_trial_run

        client = mlflow_client(self.tracking_uri)
        run_id = (trial.last_result or {}).get("mlflow_run_id") or find_trial_run(
            client, self.experiment_id, self.parent_run_id, trial.trial_id)
        if run_id is None:
            return
        tags = client.get_run(run_id).data.tags
        ended = tags.get(schema.STOP_REASON_TAG)
        if ended in (schema.STOP_COMPLETED, schema.STOP_ASHA) and (trial.last_result or {}).get(
                "replayed"):
            return  # a finished trial replayed after a restore: its run keeps how it ended
        if ended == schema.STOP_FAILED and tags.get(schema.STOP_MESSAGE_TAG):
            return  # the trainable recorded its own exception; Ray's wrapper says less
        end_trial_run(client, run_id, stop_reason, message)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        epochs = int(reported_epoch(trial.last_result or {}) or 0)
        if epochs >= self.max_epochs:
            self._end(trial, schema.STOP_COMPLETED)
        else:
            self._end(trial, schema.STOP_ASHA,
                      f"stopped by the scheduler after {epochs} of {self.max_epochs} epochs")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._end(trial, schema.STOP_FAILED, error_reason(trial))


def error_reason(trial) -> str:
    """``<exception class>: <first line>`` of the error a trial ended with (the trainable's own
    exception inside Ray's wrapper, or Ray's: a lost worker is ``ActorDiedError``), read from
    what Tune saved of it; "trial raised an error" when Tune saved nothing."""
    try:
        exc = trial.get_pickled_error()
    except Exception:  # an error that cannot be unpickled here: use its text
        exc = None
    if exc is not None:
        cause = getattr(exc, "cause", None) or exc
        first = next((line for line in str(cause).strip().splitlines() if line.strip()), "")
        return f"{type(cause).__name__}: {first}"[:1000]
    try:
        text = trial.get_error() or ""
    except Exception:
        text = ""
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1][:1000] if lines else "trial raised an error"


def make_scheduler(max_epochs: int, grace_period: int, reduction_factor: float,
                   early_stopping: bool = True, asha_rule: str = "rank"):
    """ASHA over the trials' reported epochs (``EPOCH_ATTR``) with the rank rule of :mod:`tuner.study.asha`
    (``asha_rule="percentile"``: Ray's own rule, for comparison); FIFO (no early stopping)
    for baselines."""
    if not early_stopping:
        return FIFOScheduler()
    if asha_rule not in ("rank", "percentile"):
        raise ValueError(f"asha_rule {asha_rule!r} not allowed; allowed: rank, percentile")
    scheduler_class = RankASHAScheduler if asha_rule == "rank" else ASHAScheduler
    return scheduler_class(time_attr=EPOCH_ATTR, max_t=max_epochs,
                         grace_period=min(grace_period, max_epochs),
                         reduction_factor=reduction_factor)


def tpe_startup_trials(num_samples: int | None) -> int:
    """Random trials before TPE starts modelling: Optuna's default of 10 would leave a 12-trial
    study almost entirely random, so small studies start modelling after a third of their
    trials (at least 2, at most Optuna's 10)."""
    if num_samples is None:
        return 10
    return max(2, min(10, num_samples // 3))


def make_searcher(seed: int, max_concurrent: int, sampler: str = "tpe",
                  num_samples: int | None = None, tell_epoch: int | None = None):
    """Seeded Optuna search (``tpe`` or ``random``) limited to ``max_concurrent`` trials.
    ``tell_epoch``: tell Optuna each trial's score at that epoch (the first rung) rather than
    its last (:class:`tuner.study.asha.EqualFidelityOptunaSearch`); None = the last, Ray's default."""
    import optuna

    if sampler == "tpe":
        optuna_sampler = optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=tpe_startup_trials(num_samples))
    elif sampler == "random":
        optuna_sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        raise ValueError(f"sampler {sampler!r} not allowed; allowed: tpe, random")
    if tell_epoch is None:
        search = RestorableOptunaSearch(sampler=optuna_sampler, metric=METRIC, mode=MODE)
    else:
        search = EqualFidelityOptunaSearch(sampler=optuna_sampler, metric=METRIC, mode=MODE,
                                           at_epoch=tell_epoch)
    return ConcurrencyLimiter(search, max_concurrent=max_concurrent)


# Trial folders are <TRIAL_FOLDER_PREFIX>_<trial id> whatever the trainable's registered name.
TRIAL_FOLDER_PREFIX = "train_trial"
# Ray Tune's trainable registry is process-wide and not thread-safe; families tuned
# concurrently register their trainables one at a time.
_REGISTRY_LOCK = threading.Lock()


def register_family_trainable(trainable: Callable, family: str, cpus: float, gpus: float) -> str:
    """Register ``trainable`` (with its per-trial resources) in Ray Tune under a name of the
    family's own, ``train_trial_<family>``, and return the name. Tune looks a trial's trainable
    up by name when it starts the trial; families tuned side by side in one driver must not
    share one (the second registration would replace the first family's trainable)."""
    name = f"{TRIAL_FOLDER_PREFIX}_{family}"
    with _REGISTRY_LOCK:
        tune.register_trainable(name, _with_trial_resources(trainable, cpus, gpus))
    return name


def _with_trial_resources(trainable: str | Callable, cpus: float, gpus: float) -> str | Callable:
    """A registered trainable's name as it is (it carries its resources); a callable wrapped
    with the per-trial resources."""
    if isinstance(trainable, str):
        return trainable
    return tune.with_resources(trainable, trial_resources(cpus, gpus))


def trial_resources(cpus: float, gpus: float) -> dict[str, float]:
    """Per-trial resources; fractional GPUs let several small trials share one device."""
    resources = {"cpu": cpus}
    if gpus > 0:
        resources["gpu"] = gpus
    return resources


def build_tuner(
    trainable: str | Callable,
    param_space: dict[str, Any],
    *,
    name: str,
    storage_path: str,
    num_samples: int,
    max_epochs: int,
    grace_period: int,
    reduction_factor: float,
    seed: int,
    max_concurrent: int,
    cpus_per_trial: float,
    gpus_per_trial: float,
    callbacks: list | None = None,
    time_budget_s: float | None = None,
    max_failures: int = 0,
    sampler: str = "tpe",
    early_stopping: bool = True,
    asha_rule: str = "rank",
    tell_epoch: int | None = None,
    verbose: int = 1,
) -> tune.Tuner:
    """A fresh ``tune.Tuner`` for one family (see module docstring); ``trainable`` is the name
    :func:`register_family_trainable` returned, or a callable (registered here with the
    resources)."""
    return tune.Tuner(
        _with_trial_resources(trainable, cpus_per_trial, gpus_per_trial),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=METRIC, mode=MODE,
            search_alg=make_searcher(seed, max_concurrent, sampler, num_samples, tell_epoch),
            scheduler=make_scheduler(max_epochs, grace_period, reduction_factor, early_stopping,
                                     asha_rule),
            num_samples=num_samples,
            time_budget_s=time_budget_s,
            # Function trainables rebuild all state per trial, so reusing the worker process
            # only saves the ~4 s import of torch/Ray per trial.
            reuse_actors=True,
            # Short trial folders: the default name lists every hyperparameter.
            trial_dirname_creator=lambda trial: f"{TRIAL_FOLDER_PREFIX}_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, callbacks=callbacks or [], verbose=verbose,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            # The best epoch goes to MLflow; Tune keeps two for resuming. With one, Ray deletes
            # a trial's previous checkpoint before the experiment state naming the new one is
            # uploaded (asynchronously, to S3 slowly enough to matter): a driver killed in that
            # gap leaves the trial unrestorable ("does not exist on storage anymore"). With two
            # the state's checkpoint survives until the state has moved on, unless epochs are
            # shorter than Tune's state-snapshot period (>= 10 s).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )


def restore_tuner(path: str, trainable: str | Callable, cpus_per_trial: float,
                  gpus_per_trial: float, finished_trials: set[str] = frozenset()) -> tune.Tuner:
    """Reopen an interrupted study at ``path``: unfinished and errored trials continue from
    their last checkpoint; the searcher's (Optuna) state is restored, first made to agree with
    the saved trials where a killed driver left the two from different moments, and a trial
    whose saved checkpoint was already deleted resumes from the next (:mod:`tuner.study.tune_state`).
    ``finished_trials``: ids of trials whose MLflow run ended completed or stopped by the
    scheduler; those the saved state lost still count toward the study's samples."""
    from tuner.study.tune_state import reconcile_search_state, repoint_lost_checkpoints

    reconcile_search_state(path, finished_trials)
    repoint_lost_checkpoints(path)
    return tune.Tuner.restore(path, _with_trial_resources(trainable, cpus_per_trial, gpus_per_trial),
                              resume_unfinished=True, resume_errored=True)


def check_storage(root: str) -> None:
    """Fail fast (ConfigError) when Ray Tune could not keep the study at ``root``, before any
    MLflow run exists. A local path must not be a file. A URI (``s3://bucket/prefix``, ...) is
    opened the way Ray opens it (``pyarrow.fs.FileSystem.from_uri``: S3 reads AWS_ENDPOINT_URL,
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, or ``?endpoint_override=host:port&scheme=http``)
    and a marker object is written and deleted under the prefix: an unreachable endpoint, a
    missing bucket or refused credentials all surface here rather than mid-study."""
    from pathlib import Path

    from tuner.study.config import ConfigError

    if "://" not in root:
        if Path(root).exists() and not Path(root).is_dir():
            raise ConfigError(f"storage {root!r} is a file; give a folder or s3://bucket/prefix")
        return
    import pyarrow.fs as pafs

    hint = ("; allowed: a local folder or a pyarrow filesystem URI such as s3://bucket/prefix "
            "(S3-compatible endpoints: AWS_ENDPOINT_URL, or ?endpoint_override=host:port&scheme=http)")
    try:
        fs, path = pafs.FileSystem.from_uri(root)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"storage {root!r} cannot be opened: {exc}{hint}") from None
    if not path.strip("/"):
        raise ConfigError(f"storage {root!r} names no bucket or folder{hint}")
    marker = f"{path.rstrip('/')}/.lenstune-storage-check"
    try:
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(marker) as out:
            out.write(b"lenstune")
        fs.delete_file(marker)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"storage {root!r} is not writable: {exc}{hint}") from None


def can_restore(path: str) -> bool:
    return tune.Tuner.can_restore(path)


def optuna_importances(param_space: dict[str, Any], trials: list[tuple[dict[str, Any], float]]
                       ) -> dict[str, float]:
    """Optuna (fANOVA) parameter importances of ``trials`` = [(flat config, best score)].
    {} when fewer than two scored trials or nothing varied."""
    import optuna

    from tuner.study.config import flatten

    # Optuna names nested parameters "model/depth"; fixed values are not distributions.
    distributions = OptunaSearch.convert_search_space(param_space)
    scored = [(cfg, score) for cfg, score in trials if score is not None and math.isfinite(score)]
    if len(scored) < 2 or not distributions:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for cfg, score in scored:
        flat = {k.replace(".", "/"): v for k, v in flatten(cfg).items()}
        params = {k: flat[k] for k in distributions if k in flat}
        if len(params) != len(distributions):
            continue
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions,
                                                  value=float(score)))
    try:
        importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):
        return {}
    return {k.replace("/", "."): float(v) for k, v in importances.items()}
