"""Configuration of a tuning study: pydantic models, YAML defaults, flag overrides.

Precedence, lowest first: field defaults here < ``tuner/study/defaults.yaml`` (and its
``profile_defaults`` section for the chosen profile) < a YAML file passed as ``--config``
< command-line flags. :func:`resolve_study_config` returns the resolved, validated config,
which is logged with the study's MLflow parent run and saved in every trial checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuner.tracking import schema

DEFAULTS_PATH = Path(__file__).with_name("defaults.yaml")
METRIC = schema.OBJECTIVE  # the study's objective, maximised
MODE = schema.OBJECTIVE_MODE
# The trial's own epoch count (reported with every result and kept in its checkpoint): what
# ASHA's rungs and the stop reason count. Ray's training_iteration restarts from the metrics
# Tune kept with a checkpoint and can lag the epochs trained after a restore.
EPOCH_ATTR = schema.EPOCH
# Where a cluster's Tune storage is named for every study (cluster/ sets it on every node).
STORAGE_ENV = "LENSTUNE_STORAGE"
OPTUNA_STORAGE_ENV = "LENSTUNE_OPTUNA_STORAGE"  # the searchers' Optuna storage on a cluster


class ConfigError(ValueError):
    """A study configuration value is invalid; the message names the value and what is allowed."""


class StudyConfig(BaseModel):
    """Everything a study run needs; units in field descriptions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    families: list[str] = Field(default_factory=lambda: ["vit"], min_length=1)
    data: Path | None = Field(None, description="dataset store root; None = simulate from preset")
    preset: str = "model_ii"
    n_per_class: int = Field(1000, ge=3, description="train images per class when simulating")
    img_size: int | None = Field(None, ge=8, description="pixels of a simulated image side")
    input_size: int | None = Field(
        None, ge=8, description="pixels of the network's input side; None = the search space's "
        "img_size, or the dataset's image size where that is null. Images are prepared for it by "
        "tuner/data/preprocess.py, in training and in the registered model alike")
    profile: Literal["gpu", "micro"] = "gpu"
    samples: int = Field(16, ge=1, description="trials per family")
    max_epochs: int | None = Field(None, ge=1, description="overrides the search-space budget")
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float | Literal["auto"] = Field(
        "auto", description="GPUs per trial (fractions below 1 share a GPU); auto = a share sized "
        "from the profile when the Ray cluster has GPU nodes or can start them, else 0 "
        "(tuner/study/resources.py)")
    max_concurrent: int | Literal["auto"] = Field(
        "auto", description="trials running at once per family; auto = the trial slots the "
        "cluster has or can scale to")
    asha_rule: Literal["rank", "percentile"] = Field(
        "rank", description="ASHA rung rule: rank = the best floor(k/rf) of the k trials at a "
        "rung go on (tuner/study/asha.py); percentile = Ray's ASHAScheduler")
    tpe_told: Literal["first-rung", "last"] = Field(
        "first-rung", description="what TPE learns of a trial: its score at the first ASHA rung, "
        "which every trial reaches (tuner.study.asha.EqualFidelityOptunaSearch), or its last score "
        "(Ray's OptunaSearch)")
    objective: Literal["val_auc", "robust_auc"] = Field(
        "val_auc", description="what ASHA and the searcher maximise: val_auc = validation macro "
        "AUC; robust_auc = macro AUC over the validation shift suite (val_shifts), every epoch")
    robust_reduce: Literal["mean", "worst"] = Field(
        "mean", description="robust_auc over the shifts: their mean, or the worst of them")
    val_shifts: list[str] = Field(
        default_factory=lambda: ["noise_x2", "noise_x4", "psf_x1.5"], min_length=1,
        description="the validation shift suite of robust_auc (names of tuner/robustness "
        "SHIFTS), simulated once from the val split's systems")
    val_shift_n_per_class: int = Field(
        50, ge=5, description="images per class of each validation shift set (at most the "
        "val split's)")
    train_data: Literal["stored", "fresh"] = Field(
        "stored", description="stored: the dataset's train split; fresh: every trial simulates "
        "a new training set each epoch on its device (simulated datasets only)")
    conditions: dict[str, Any] | None = Field(
        None, description="observing conditions drawn per image when the study simulates its "
        "dataset (tuner.lensing.conditions.ObservingConditions; --conditions FILE.yaml); "
        "None = the preset's fixed values")
    shift_floor: float | None = Field(
        None, ge=0, le=1, description="tuner/run.py's promotion refuses a best trial whose worst "
        "macro AUC on the test shift suite is below this")
    time_budget_s: float | None = Field(None, gt=0, description="seconds per family")
    objectives: list[str] | None = Field(
        None, description="a multi-objective study: the study's objective first, then costs "
        "(tuner/study/objectives.py), e.g. [val_auc_macro:max, latency_ms:min]; needs "
        "strategy nsga2 or mo-tpe")
    max_latency_ms: float | None = Field(
        None, gt=0, description="tuner/run.py's promotion: only trials whose latency_ms (batch "
        "1, on the trial's device) is at most this")
    max_params: int | None = Field(
        None, ge=1, description="tuner/run.py's promotion: only trials with at most this many "
        "parameters")
    strategy: str = Field(
        "asha-tpe", description="how each family is searched: searcher and scheduler, one of "
        "tuner/study/strategies.py's STRATEGIES (docs/tuning.md)")
    grid_points: int = Field(3, ge=2, description="strategy grid: values per numeric range")
    optuna_storage: str | None = Field(
        None, description="Optuna RDB storage of the searchers' studies (sqlite:///..., "
        "postgresql://...); None = $LENSTUNE_OPTUNA_STORAGE, else sqlite:///<runs_dir>/optuna.db. "
        "`lenstune dashboard` opens it")
    extend: int | None = Field(
        None, ge=1, description="add this many trials per family to the study named by "
        "study_name (finished or not), with the search space it ran with")
    warm_start: str | None = Field(
        None, description="seed each family's searcher with the best configurations of this "
        "earlier study (or of every study in this MLflow experiment) on the same tracking server "
        "(tuner/study/warm_start.py)")
    warm_start_top: int = Field(3, ge=1, description="warm start: how many of the earlier "
                                "best configurations are the family's first trials")
    plateau: int | None = Field(
        None, ge=1, description="stop a family once its best objective has not improved in this "
        "many trials (tuner/study/stopping.py)")
    budget_gpu_hours: float | None = Field(
        None, gt=0, description="stop a family once its trials' device time reaches this many "
        "GPU-hours (epoch seconds x GPU share; CPU-hours, epoch seconds x CPUs, on a CPU-only study)")
    experiment: str = Field("lenstune", min_length=1)
    study_name: str | None = Field(None, description="Ray Tune run name; None = derived")
    resume: bool = False
    tracking_uri: str | None = None
    runs_dir: Path = Path("runs")
    storage: str | None = None
    seed: int = 0
    max_failures: int = Field(2, ge=0, description="retries of a trial whose worker, node or "
                              "device failed, from its last checkpoint (a NaN loss is not retried)")
    tracking_outage_limit_s: float = Field(
        180.0, gt=0, description="seconds the tracking server may stay unreachable during a "
        "study (writes wait in <runs_dir>/outbox meanwhile) before the study stops cleanly "
        "(exit 1; --resume sends what waited and goes on)")
    num_cpus: int | None = Field(None, ge=1)
    promote: bool = Field(True, description="tuner/run.py: register the best trial and decide "
                          "the champion alias when the study ends")
    ensemble_top_k: int | None = Field(None, ge=2, description="tuner/run.py: also register a "
                                       "hyper-ensemble picked from the top-k completed trials")

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        from tuner.study.strategies import get_strategy

        return get_strategy(value).name  # ValueError naming the allowed ones

    @field_validator("families")
    @classmethod
    def _no_duplicates(cls, families: list[str]) -> list[str]:
        if len(set(families)) != len(families):
            raise ValueError(f"families listed twice: {families}")
        return families

    compile: bool = Field(False, description="torch.compile each trial's model (GPU trials "
                          "gain throughput after a compile of tens of seconds)")

    @model_validator(mode="after")
    def _extend_names_its_study(self):
        if self.extend and not self.study_name:
            raise ValueError(f"extend={self.extend} adds trials to an earlier study: name it with "
                             "--study-name (the study's name, printed above its leaderboard)")
        return self

    @model_validator(mode="after")
    def _objectives_fit_the_strategy(self):
        from tuner.study.objectives import parse_objectives
        from tuner.study.strategies import get_strategy
        from tuner.tracking.schema import OBJECTIVES

        multi = get_strategy(self.strategy).multi_objective
        objectives = parse_objectives(self.objectives or [], OBJECTIVES[self.objective])
        if multi and len(objectives) < 2:
            raise ValueError(f"strategy {self.strategy} searches several objectives; give them "
                             "with --objectives, e.g. val_auc_macro:max,latency_ms:min")
        if not multi and len(objectives) > 1:
            raise ValueError(f"objectives {self.objectives} need a multi-objective strategy; "
                             f"allowed: --strategy nsga2 or mo-tpe (not {self.strategy})")
        return self

    def parsed_objectives(self):
        """The study's objectives (:class:`tuner.study.objectives.Objective`): --objectives, or
        the one objective."""
        from tuner.study.objectives import Objective, parse_objectives
        from tuner.tracking.schema import OBJECTIVES

        primary = OBJECTIVES[self.objective]
        return parse_objectives(self.objectives, primary) if self.objectives else [
            Objective(primary, "max")]

    def cost_metrics(self) -> list[str]:
        """The costs every trial measures: those of the objectives and the promotion limits."""
        from tuner.models.cost import LATENCY_MS, PARAMS

        costs = [o.metric for o in self.parsed_objectives()[1:]]
        costs += [LATENCY_MS] * (self.max_latency_ms is not None) + [PARAMS] * (self.max_params is not None)
        return sorted(set(costs))

    @field_validator("conditions")
    @classmethod
    def _known_conditions(cls, conditions: dict[str, Any] | None) -> dict[str, Any] | None:
        if conditions is None:
            return None
        from tuner.lensing.conditions import ObservingConditions

        return ObservingConditions.from_mapping(conditions).to_dict()

    @field_validator("gpus_per_trial")
    @classmethod
    def _gpu_fraction(cls, gpus: float | str) -> float | str:
        if gpus == "auto":
            return gpus
        if gpus < 0:
            raise ValueError("must be >= 0 or 'auto'")
        if gpus > 1 and gpus != int(gpus):
            raise ValueError(f"gpus_per_trial={gpus}: fractions only below 1")
        return gpus

    @field_validator("max_concurrent")
    @classmethod
    def _positive_concurrency(cls, value: int | str) -> int | str:
        if value != "auto" and value < 1:
            raise ValueError("must be >= 1 or 'auto'")
        return value

    # Derived paths. Relative paths resolve against the working directory at run time.
    def resolved_runs_dir(self) -> Path:
        return self.runs_dir.expanduser().resolve()

    def outbox_dir(self, study_name: str) -> Path:
        """Journals of the study's writes that wait for the tracking server
        (:mod:`tuner.tracking.outbox`)."""
        return self.resolved_runs_dir() / "outbox" / study_name

    def resolved_tracking_uri(self) -> str:
        """The MLflow tracking URI: the configured one, else ``$MLFLOW_TRACKING_URI`` (what the
        cluster configs set on every node, and what the other lenstune commands read), else the
        embedded sqlite store under the runs folder."""
        if self.tracking_uri:
            return self.tracking_uri
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        return f"sqlite:///{self.resolved_runs_dir() / 'mlflow.db'}"

    def resolved_optuna_storage(self) -> str:
        """The searchers' Optuna storage URL: the configured one, else ``$LENSTUNE_OPTUNA_STORAGE``
        (a cluster's PostgreSQL: docs/cluster.md), else a sqlite file under the runs folder (the
        searcher runs in the driver, so the driver's disk is enough on one machine)."""
        return (self.optuna_storage or os.environ.get(OPTUNA_STORAGE_ENV)
                or f"sqlite:///{self.resolved_runs_dir() / 'optuna.db'}")

    def resolved_storage(self) -> str:
        """Ray Tune storage root: the configured one (flag or config file), else
        ``$LENSTUNE_STORAGE`` (what the cluster configs set on every node), else
        ``<runs_dir>/studies``; an absolute path or a URI such as ``s3://bucket/prefix``
        (pyarrow options may follow as a query, e.g. ``?endpoint_override=host:port&scheme=http``)."""
        storage = self.storage or os.environ.get(STORAGE_ENV) or None
        if storage is None:
            return str(self.resolved_runs_dir() / "studies")
        if "://" in storage:
            return storage
        return str(Path(storage).expanduser().resolve())

    def tracking_server(self) -> bool:
        """Whether the study logs to a tracking server (http/https), whichever way it was named:
        the server then keeps the artifacts (its proxy or its artifact root). Any other store
        (the embedded sqlite file, a database URI) gets a local artifact folder under the runs
        folder."""
        return self.resolved_tracking_uri().startswith(("http://", "https://"))

    def local_artifact_root(self) -> Path | None:
        """The artifact folder of a new experiment when no tracking server is used, else None
        (the server decides)."""
        if self.tracking_server():
            return None
        return self.resolved_runs_dir() / "mlartifacts" / self.experiment


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (``line L, column C``)."""
    problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; ConfigError when the file is missing or not a mapping."""
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {yaml_problem(exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping, got {type(data).__name__}")
    return data


def resolve_study_config(
    overrides: dict[str, Any], config_file: Path | None = None, defaults_file: Path = DEFAULTS_PATH
) -> StudyConfig:
    """Merge defaults, the profile's defaults, an optional YAML file and ``overrides``
    (flags; ``None`` values mean "not given") into a validated :class:`StudyConfig`."""
    base = load_yaml(defaults_file)
    profile_defaults = base.pop("profile_defaults", {}) or {}
    user = load_yaml(config_file) if config_file else {}
    flags = {k: v for k, v in overrides.items() if v is not None}
    profile = flags.get("profile", user.get("profile", base.get("profile", "gpu")))
    if profile not in profile_defaults and profile not in ("gpu", "micro"):
        raise ConfigError(f"profile {profile!r} is not allowed; allowed: gpu, micro")
    merged = {**base, **(profile_defaults.get(profile) or {}), **user, **flags}
    try:
        return StudyConfig(**merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}={err.get('input')!r}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid study config: {problems}") from None


def parse_family_list(text: str, known: list[str]) -> list[str]:
    """``"all"`` or a comma list -> family names, checked against ``known``."""
    if text.strip() == "all":
        return list(known)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if not names or unknown:
        raise ConfigError(
            f"unknown family {', '.join(map(repr, unknown)) or repr(text)}; "
            f"allowed: all, {', '.join(known)}"
        )
    return names


def join_storage(root: str, *parts: str) -> str:
    """``root/part/...`` for a storage path or URI, keeping a URI's query (pyarrow options such
    as ``endpoint_override``) at the end: ``s3://b/p?scheme=http`` + ``study`` ->
    ``s3://b/p/study?scheme=http``."""
    base, sep, query = root.partition("?")
    return "/".join([base.rstrip("/"), *parts]) + sep + query


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> ``{"model.depth": 4, "train.lr": 1e-3}`` (MLflow param names)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
