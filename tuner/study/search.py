"""Assembly of one family's Ray Tune study: the strategy's seeded Optuna searcher behind a
concurrency limit and its scheduler (ASHA on the objective with the search space's budget, or
FIFO; :mod:`tuner.study.strategies`), the study-level stopper, per-trial resources,
failure and checkpoint policy, a fail-fast check of the storage, restore of an interrupted
study, and the driver-side callback that records why each trial stopped in MLflow.
"""

from __future__ import annotations

import logging
import math
import threading
from pathlib import Path
from typing import Any, Callable

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from tuner.study.asha import (EqualFidelityOptunaSearch, RankASHAScheduler, RestorableOptunaSearch,
                              reported_epoch)
from tuner.study.config import EPOCH_ATTR, METRIC, MODE
from tuner.study.faults import DiskError, disk_cause
from tuner.study.strategies import rung_epochs
from tuner.tracking import schema
from tuner.tracking.outbox import Outbox, ServerWatch, TrackingOutageError


log = logging.getLogger(__name__)


class TrialStopCallback(tune.Callback):
    """The driver's side of a family's trial runs in MLflow, and its watch on the server.

    - When Ray starts a trial, its run is opened (so a trial whose worker dies before it logs
      anything is still recorded); the trainable finds and reuses it.
    - A trial that the scheduler or the study stops never runs past its last
      ``tune.report``, so it cannot end its own run, and Optuna even sees it as COMPLETE: here
      a trial that completes with fewer epochs than ``max_epochs`` gets what
      :func:`trial_end` names (``asha_stopped``, ``plateau_stopped``, ...; run KILLED), one
      that errors is
      ``failed`` (run FAILED, ``<exception class>: <first line>`` as the message), and a
      trial Tune retries gets the cause of the retry tagged.
    - Every write but the opening goes through an :class:`tuner.tracking.outbox.Outbox`
      (journalled under ``outbox_dir``, sent by a background thread), so Tune's loop does not
      wait on the server, and no exception of MLflow's reaches it.
    - Once the server has been unreachable for ``outage_limit_s`` seconds the family's Tune
      run is stopped with :class:`TrackingOutageError` (the study ends cleanly; ``--resume``
      sends the journals and goes on).

    Picklable: Tune saves it with the study for restore; the outbox and the watch are made
    again in the process that restores it.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, max_epochs: int,
                 run_fields: dict[str, Any], *, outbox_dir: str, outage_limit_s: float,
                 state_path: str | None = None, strategy=None, stopper=None):
        from tuner.study.strategies import DEFAULT_STRATEGY, get_strategy

        self.strategy = strategy or get_strategy(DEFAULT_STRATEGY)
        self.stopper = stopper  # the family's StudyStopper (the same object Tune asks)
        self._started: set[str] = set()
        self._ended: set[str] = set()
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.max_epochs = max_epochs
        # study_name, family, dataset (DatasetInfo fields), params: what a trial run is made of
        self.run_fields = run_fields
        self.outbox_dir = outbox_dir
        self.outage_limit_s = outage_limit_s
        self.state_path = state_path  # the family's Tune storage: good copies of its state
        self._kept_at = 0.0
        self._outbox: Outbox | None = None
        self._watch: ServerWatch | None = None
        self._disk: str | None = None  # a full or read-only disk seen: the study stops

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_outbox": None, "_watch": None, "_disk": None, "_kept_at": 0.0}

    def _send(self, op: dict[str, Any]) -> None:
        try:
            if self._outbox is None:
                from tuner.tracking.store import mlflow_client

                self._outbox = Outbox(mlflow_client(self.tracking_uri), self.outbox_dir,
                                      f"driver-{self.run_fields['family']}")
            self._outbox.submit(op)
        except Exception as exc:  # never an exception into Tune's loop
            log.warning("could not record %s of a trial: %s", op.get("op"), exc)
            self._disk = self._disk or disk_cause(exc)

    def _trial_fields(self, trial) -> dict[str, Any]:
        return {"experiment_id": self.experiment_id, "parent_run_id": self.parent_run_id,
                "trial_id": trial.trial_id}

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        """A good copy of each state file Tune saved (tune_state.keep_good_copies): what
        ``--resume`` restores from when a full disk tore one. Every step on local storage (a
        stat per file), every 10 s on remote storage (requests)."""
        import time

        remote = "://" in (self.state_path or "")
        if self.state_path and time.monotonic() - self._kept_at > (10.0 if remote else 0.0):
            from tuner.study.tune_state import keep_good_copies

            keep_good_copies(self.state_path)
            self._kept_at = time.monotonic()

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if self._disk:
            raise DiskError(f"the study cannot write its files: {self._disk}", self._disk)
        if self._watch is None:
            self._watch = ServerWatch(self.tracking_uri).start()
        away = self._watch.away_for()
        if away > self.outage_limit_s:
            raise TrackingOutageError(
                f"the MLflow tracking server has not answered for {away:.0f} s (limit "
                f"{self.outage_limit_s:g} s, --tracking-outage-limit; {self._watch.reason}); "
                f"the study stopped; its unsent writes wait in {self.outbox_dir}; run the same "
                "command with --resume once the server is back")

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        """Open the trial's run now, before Tune hands the trial its first task, so the
        trainable finds it and never makes a second; while the server is away the opening
        waits in the journal (and the trial, which needs the server, opens its own)."""
        from tuner.study.config import flatten
        from tuner.tracking.outbox import is_outage
        from tuner.tracking.store import mlflow_client
        from tuner.tracking.writer import open_trial_run

        self._started.add(trial.trial_id)
        fields = self.run_fields
        op = {"op": "open_trial", "fields": {
            "experiment_id": self.experiment_id, "parent_run_id": self.parent_run_id,
            "study_name": fields["study_name"], "trial_id": trial.trial_id,
            "family": fields["family"], "dataset": fields["dataset"],
            "params": {k: str(v) for k, v in {**flatten(trial.config), "family": fields["family"],
                                              **fields["params"]}.items()}}}
        if self._watch is None or self._watch.away_for() == 0:
            try:
                open_trial_run(mlflow_client(self.tracking_uri), **op["fields"])
                return
            except Exception as exc:
                if not is_outage(exc):
                    log.warning("could not open the MLflow run of trial %s: %s",
                                trial.trial_id, exc)
                    return
        self._send(op)

    def _end(self, trial, stop_reason: str, message: str = "") -> None:
        result = trial.last_result or {}
        self._send({"op": "end_trial", "fields": {
            **self._trial_fields(trial), "run_id": result.get("mlflow_run_id"),
            "stop_reason": stop_reason, "message": message,
            "replayed": bool(result.get("replayed"))}})

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        """Name what ended the trial: its whole budget, the study (a plateau, a budget: the
        stopper's reason), or the strategy's scheduler. A trial the study stopped before it
        started has no run and is left alone."""
        if trial.trial_id not in self._started and not trial.last_result:
            return
        self._ended.add(trial.trial_id)
        self._end(trial, *trial_end(self.strategy, self.stopper, trial, self.max_epochs))
        if self.stopper is not None:
            self.stopper.trial_ended(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._ended.add(trial.trial_id)
        reason = error_reason(trial)
        self._disk = self._disk or disk_cause(reason)
        self._end(trial, schema.STOP_FAILED, reason)
        if self.stopper is not None:
            self.stopper.trial_ended(trial.trial_id)

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        """Tune retries the trial from its last checkpoint (its worker or node died, or it
        raised): count the attempt and say why on its run."""
        reason = error_reason(trial)
        self._disk = self._disk or disk_cause(reason)  # a retry would fail the same way
        self._send({"op": "trial_tags", "fields": {
            **self._trial_fields(trial), "tags": {
                schema.RETRIES_TAG: str(trial.num_failures), schema.RETRIED_AFTER_TAG: reason}}})

    def on_experiment_end(self, trials: list, **info) -> None:
        """End the runs of the trials the study stopped (Tune stops them without a trial
        callback), then send what is waiting (not while the server is away: the journal
        keeps it)."""
        if self.stopper is not None and self.stopper.reason:
            for trial in trials:
                if trial.trial_id not in self._ended and trial.status != "ERROR":
                    self.on_trial_complete(0, trials, trial)
        if self._outbox is not None:
            away = self._watch is not None and self._watch.away_for() > 0
            self._outbox.close(wait_s=0.0 if away else 60.0, raise_errors=False)
            self._outbox = None
        if self._watch is not None:
            self._watch.stop()
            self._watch = None


def error_reason(trial) -> str:
    """``<exception class>: <first line>`` of the error a trial ended with (the trainable's own
    exception inside Ray's wrapper, or Ray's: a lost worker is ``ActorDiedError``), read from
    what Tune saved of it (on the driver's disk first: Tune copies it to the study's storage
    later); "trial raised an error" when Tune saved nothing."""
    exc = None
    try:
        local = Path(trial.pickled_error_file) if trial.local_path else None
        if local is not None and local.is_file():
            import cloudpickle

            exc = cloudpickle.loads(local.read_bytes())
        else:
            exc = trial.get_pickled_error()
    except Exception:  # an error that cannot be unpickled here: use its text
        exc = None
    if exc is not None:
        return describe_error(exc)
    try:
        text = trial.get_error() or ""
    except Exception:
        text = ""
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1][:1000] if lines else "trial raised an error"


def describe_error(exc: BaseException) -> str:
    """``<exception class>: <first line>`` of an error (the cause inside Ray's wrapper)."""
    cause = getattr(exc, "cause", None) or exc
    first = next((line for line in str(cause).strip().splitlines() if line.strip()), "")
    return f"{type(cause).__name__}: {first}"[:1000]


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


def make_population_scheduler(kind: str, mutations: dict[str, Any], interval: int,
                              ranges: dict[str, tuple]):
    """PBT (``hyperparam_mutations``: Tune domains) or PB2 (``hyperparam_bounds``: [low, high]
    per key) on the reported epoch, perturbing every ``interval`` epochs, the worst quarter
    copying the best quarter; new values are kept in ``ranges`` (:class:`KeepInRange`)."""
    from ray.tune.schedulers import PopulationBasedTraining

    keep = KeepInRange(ranges) if ranges else None
    if kind == "pbt":
        return PopulationBasedTraining(
            time_attr=EPOCH_ATTR, perturbation_interval=interval,
            hyperparam_mutations=mutations, quantile_fraction=0.25, resample_probability=0.25,
            custom_explore_fn=keep)
    if kind != "pb2":
        raise ValueError(f"population scheduler {kind!r} not allowed; allowed: pbt, pb2")
    from ray.tune.schedulers.pb2 import PB2

    return PB2(time_attr=EPOCH_ATTR, perturbation_interval=interval,
               hyperparam_bounds=mutations, quantile_fraction=0.25, custom_explore_fn=keep)


class KeepInRange:
    """``custom_explore_fn`` of PBT and PB2: a new value of a mutable hyperparameter brought
    back into its search-space range. PBT multiplies by 0.8 or 1.2 without looking at the
    range (an ``aug_strength`` of 0.9 became 1.08, which the trainable refuses); PB2 proposes
    floats for integer ones. ``ranges``: ``train/<key>`` -> (low, high, integer step or None)
    (:meth:`tuner.study.search_space.SearchSpace.mutable_ranges`)."""

    def __init__(self, ranges: dict[str, tuple]):
        self.ranges = {tuple(k.split("/")): tuple(v) for k, v in ranges.items()}

    def __call__(self, config: dict) -> dict:
        for (part, key), (low, high, step) in self.ranges.items():
            if key not in config.get(part, {}):
                continue
            value = min(max(float(config[part][key]), low), high)
            if step is not None:
                value = int(low + step * round((value - low) / step))
                value = min(value, int(low + step * ((high - low) // step)))
            config[part][key] = value
        return config


def trial_end(strategy, stopper, trial, max_epochs: int) -> tuple[str, str]:
    """Stop reason and message of a Tune trial that ended, not failed: what
    :class:`TrialStopCallback` records on its run and :class:`~tuner.study.progress.StudyProgress`
    prints (:meth:`~tuner.study.strategies.Strategy.trial_end`, with the study stopper's reason
    where it has stopped the study)."""
    epochs = int(reported_epoch(trial.last_result or {}) or 0)
    study_stop = stopper.reason if stopper is not None else None
    return strategy.trial_end(epochs, max_epochs, study_stop,
                              stopper.message if study_stop else "")


def checkpoint_epochs(strategy, space, max_epochs: int) -> list[int]:
    """The epochs below ``max_epochs`` at which a trial saves a Tune checkpoint (it also saves
    one at the end): where the strategy's scheduler decides
    (:meth:`~tuner.study.strategies.Strategy.decision_epochs`), or ASHA's rungs for one that
    decides nowhere, so that a resumed study loses little of a running trial."""
    return strategy.decision_epochs(space, max_epochs) or rung_epochs(
        max_epochs, space.budget.grace_period, space.budget.reduction_factor)


def tpe_startup_trials(num_samples: int | None) -> int:
    """Random trials before TPE starts modelling: Optuna's default of 10 would leave a 12-trial
    study almost entirely random, so small studies start modelling after a third of their
    trials (at least 2, at most Optuna's 10)."""
    if num_samples is None:
        return 10
    return max(2, min(10, num_samples // 3))


def optuna_storage(url: str):
    """An Optuna RDB storage at ``url`` (tables made if new). SQLite waits up to 60 s for a
    lock: the families of a study (threads) and studies side by side share one file."""
    import optuna

    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def make_searcher(seed: int, max_concurrent: int, sampler: str = "tpe",
                  num_samples: int | None = None, tell_epoch: int | None = None,
                  metric: str = METRIC, grid: dict[str, list] | None = None,
                  points_to_evaluate: list[dict[str, Any]] | None = None,
                  storage: str | None = None, study_name: str | None = None,
                  objectives: list | None = None):
    """Seeded Optuna search (``tpe``, ``gp``, ``random``, or ``grid`` over ``grid``: Optuna's
    parameter name -> values) limited to ``max_concurrent`` trials. ``points_to_evaluate``
    (Optuna-named configurations, :mod:`tuner.study.warm_start`) are the first trials.
    ``storage``: an Optuna RDB URL where the searcher keeps its study, named ``study_name``
    (:func:`optuna_storage`); None = in memory. ``objectives`` (two or more
    :class:`tuner.study.objectives.Objective`): a multi-objective search over their metrics
    instead of ``metric``.
    ``tell_epoch``: tell Optuna each trial's score at that epoch (the first rung) rather than
    its last (:class:`tuner.study.asha.EqualFidelityOptunaSearch`); None = the last, Ray's default."""
    import optuna

    if sampler == "tpe":
        optuna_sampler = optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=tpe_startup_trials(num_samples))
    elif sampler == "gp":
        optuna_sampler = optuna.samplers.GPSampler(
            seed=seed, n_startup_trials=tpe_startup_trials(num_samples))
    elif sampler == "nsga2":
        optuna_sampler = optuna.samplers.NSGAIISampler(seed=seed)
    elif sampler == "random":
        optuna_sampler = optuna.samplers.RandomSampler(seed=seed)
    elif sampler == "grid":
        if not grid:
            raise ValueError("the grid sampler needs the grid (SearchSpace.grid())")
        optuna_sampler = optuna.samplers.GridSampler(grid, seed=seed)
    else:
        raise ValueError(f"sampler {sampler!r} not allowed; allowed: tpe, gp, nsga2, random, grid")
    warm = {"points_to_evaluate": points_to_evaluate} if points_to_evaluate else {}
    if storage:
        warm.update(storage=optuna_storage(storage), study_name=study_name)
    mode: str | list[str] = MODE
    if objectives and len(objectives) > 1:
        metric, mode = [o.metric for o in objectives], [o.mode for o in objectives]
    if tell_epoch is None:
        search = RestorableOptunaSearch(sampler=optuna_sampler, metric=metric, mode=mode, **warm)
    else:
        search = EqualFidelityOptunaSearch(sampler=optuna_sampler, metric=metric, mode=MODE,
                                           at_epoch=tell_epoch, **warm)
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
    plan,
    *,
    name: str,
    storage_path: str,
    seed: int,
    max_concurrent: int,
    cpus_per_trial: float,
    gpus_per_trial: float,
    callbacks: list | None = None,
    time_budget_s: float | None = None,
    max_failures: int = 0,
    verbose: int = 1,
    metric: str = METRIC,
    stopper: tune.Stopper | None = None,
    points_to_evaluate: list[dict[str, Any]] | None = None,
    optuna_storage: str | None = None,
    objectives: list | None = None,
) -> tune.Tuner:
    """A fresh ``tune.Tuner`` for one family (see module docstring); ``trainable`` is the name
    :func:`register_family_trainable` returned, or a callable (registered here with the
    resources). ``plan``: the strategy's searcher and scheduler over the family's search space
    (:class:`tuner.study.strategies.SearchPlan`): an Optuna searcher (``points_to_evaluate``
    first, its study in ``optuna_storage``, ``objectives`` for a multi-objective one) with
    ASHA or FIFO; Tune's variant generator with PBT or PB2 (which take no searcher); or BOHB
    (:mod:`tuner.study.hyperband`). ``stopper`` ends the family early
    (:class:`tuner.study.stopping.StudyStopper`)."""
    strategy = plan.strategy
    if strategy.population:
        from ray.tune.search import BasicVariantGenerator

        search_alg = BasicVariantGenerator(max_concurrent=max_concurrent, random_state=seed)
        scheduler = make_population_scheduler(strategy.scheduler, plan.mutations,
                                              plan.perturbation_interval, plan.ranges or {})
    elif strategy.scheduler == "hyperband":
        from tuner.study.hyperband import make_bohb

        search_alg, scheduler = make_bohb(
            metric=metric, mode=MODE, seed=seed, max_concurrent=max_concurrent,
            max_epochs=plan.max_epochs, reduction_factor=plan.reduction_factor,
            time_attr=EPOCH_ATTR)
    else:
        search_alg = make_searcher(seed, max_concurrent, strategy.sampler, plan.samples,
                                   plan.tell_epoch, metric, plan.grid, points_to_evaluate,
                                   optuna_storage, optuna_study_name(storage_path, name),
                                   objectives)
        scheduler = make_scheduler(plan.max_epochs, plan.grace_period, plan.reduction_factor,
                                   strategy.early_stopping, plan.asha_rule)
    return tune.Tuner(
        _with_trial_resources(trainable, cpus_per_trial, gpus_per_trial),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=metric, mode=MODE,
            search_alg=search_alg, scheduler=scheduler,
            num_samples=plan.samples,
            time_budget_s=time_budget_s,
            # Function trainables rebuild all state per trial, so reusing the worker process
            # only saves the ~4 s import of torch/Ray per trial.
            reuse_actors=True,
            # Short trial folders: the default name lists every hyperparameter.
            trial_dirname_creator=lambda trial: f"{TRIAL_FOLDER_PREFIX}_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, callbacks=callbacks or [], verbose=verbose,
            stop=stopper,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            # The best epoch goes to MLflow; Tune keeps two for resuming. With one, Ray deletes
            # a trial's previous checkpoint before the experiment state naming the new one is
            # uploaded (asynchronously, to S3 slowly enough to matter): a driver killed in that
            # gap leaves the trial unrestorable ("does not exist on storage anymore"). With two
            # the state's checkpoint survives until the state has moved on, unless epochs are
            # shorter than Tune's state-snapshot period (>= 10 s).
            # PBT: every checkpoint is kept, an exploiting trial may copy an older one.
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=None if strategy.population else 2),
        ),
    )


def optuna_study_name(storage_path: str, family: str) -> str:
    """The Optuna study of one family of a study: ``<study name>/<family>`` (the study's Tune
    storage folder is named after the study)."""
    return f"{storage_path.rstrip('/').rsplit('/', 1)[-1]}/{family}"


def fail_unfinished_optuna_trials(url: str, study_name: str) -> int:
    """End as FAIL every trial of an Optuna study still RUNNING once its family's search is
    over (suggested by a searcher whose driver was killed before Tune saved it: no Ray trial
    will ever report it); returns how many. Nothing when the study does not exist."""
    import optuna

    storage = optuna_storage(url)
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return 0
    ended = 0
    for trial in storage.get_all_trials(study_id, deepcopy=False,
                                        states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_system_attr(trial._trial_id, "lenstune_ended",
                                      "never reported: its driver was killed after suggesting it")
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        ended += 1
    return ended


def restore_tuner(path: str, trainable: str | Callable, cpus_per_trial: float,
                  gpus_per_trial: float, finished_trials: set[str] = frozenset()) -> tune.Tuner:
    """Reopen an interrupted study at ``path``: unfinished and errored trials continue from
    their last checkpoint; the searcher's (Optuna) state is restored, first made to agree with
    the saved trials where a killed driver left the two from different moments, and a trial
    whose saved checkpoint was already deleted resumes from the next (:mod:`tuner.study.tune_state`).
    ``finished_trials``: ids of trials whose MLflow run ended completed or stopped by the
    scheduler; those the saved state lost still count toward the study's samples."""
    from tuner.study.tune_state import (reconcile_search_state, repoint_lost_checkpoints,
                                        restore_good_copies)

    restore_good_copies(path)
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
