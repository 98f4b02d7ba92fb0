"""Search spaces: one YAML file per family in ``search_spaces/``, two profiles each.

File layout (every key checked; unknown keys are errors)::

    family: vit
    profiles:
      gpu:                      # the real search (default profile)
        img_size: null          # null = the dataset's image size
        model:
          fixed: {patch_size: 8}                               # passed to build_model as is
          search: {depth: {type: int, low: 6, high: 12}}       # sampled per trial
        train:
          fixed: {aug_rotation: true}
          search: {lr: {type: loguniform, low: 1.0e-4, high: 3.0e-3}}
        budget: {max_epochs: 40, grace_period: 4, reduction_factor: 3}
        pbt: {mutable: [lr], perturbation_interval: 4}   # --strategy pbt: what it may perturb
      micro: {...}              # tiny models and budgets for CPU tests and the demo

Distributions: ``loguniform``/``uniform`` (low < high), ``int`` (inclusive low..high, optional
step), ``choice`` (a list of scalars, so Optuna can store them). Augmentation is limited to what
respects the physics of a lensing image: free rotations and flips (no colour jitter, no cutout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from tuner.study.config import yaml_problem

PROFILES = ("gpu", "micro")


class SearchSpaceError(ValueError):
    """A search-space file is missing, malformed, or asks for something its family rejects."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrainHParams(_Strict):
    """Training settings of one trial (the ``train`` part of a config).

    lr: peak AdamW learning rate (> 0); weight_decay: AdamW decoupled decay (>= 0);
    warmup_epochs: linear warm-up length in epochs; batch_size: images per step;
    label_smoothing: in [0, 1); aug_rotation: free-angle rotation on/off; aug_flip: random
    horizontal/vertical flips on/off; aug_strength: probability in [0, 1] of rotating an image.
    """

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_epochs: int = Field(2, ge=0)
    batch_size: int = Field(64, ge=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    aug_rotation: bool = True
    aug_flip: bool = True
    aug_strength: float = Field(0.5, ge=0, le=1)


class _Range(_Strict):
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self):
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        return self


class LogUniform(_Range):
    type: Literal["loguniform"]

    @model_validator(mode="after")
    def _positive(self):
        if self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, got {self.low}")
        return self

    def tune(self):
        from ray import tune
        return tune.loguniform(self.low, self.high)

    def draw(self, rng: np.random.Generator) -> float:
        return float(np.exp(rng.uniform(np.log(self.low), np.log(self.high))))

    def grid(self, points: int) -> list[float]:
        """``points`` values evenly spaced in log from low to high (the grid strategy)."""
        return [float(v) for v in np.geomspace(self.low, self.high, points)]


class Uniform(_Range):
    type: Literal["uniform"]

    def tune(self):
        from ray import tune
        return tune.uniform(self.low, self.high)

    def draw(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))

    def grid(self, points: int) -> list[float]:
        return [float(v) for v in np.linspace(self.low, self.high, points)]


class IntRange(_Range):
    type: Literal["int"]
    low: int
    high: int  # inclusive
    step: int = Field(1, ge=1)

    def tune(self):
        from ray import tune
        return tune.qrandint(self.low, self.high, self.step)  # inclusive of high

    def draw(self, rng: np.random.Generator) -> int:
        return int(self.low + self.step * rng.integers(0, (self.high - self.low) // self.step + 1))

    def grid(self, points: int) -> list[int]:
        """At most ``points`` allowed values, evenly spread, low and high included."""
        allowed = np.arange(self.low, self.high + 1, self.step)
        picks = np.unique(np.round(np.linspace(0, len(allowed) - 1, points)).astype(int))
        return [int(allowed[i]) for i in picks]


class Choice(_Strict):
    type: Literal["choice"]
    values: list[Union[bool, int, float, str]] = Field(min_length=1)

    def tune(self):
        from ray import tune
        return tune.choice(list(self.values))

    def draw(self, rng: np.random.Generator):
        return self.values[int(rng.integers(0, len(self.values)))]

    def grid(self, points: int) -> list:
        """Every value, whatever ``points``."""
        return list(self.values)


Distribution = Annotated[Union[LogUniform, Uniform, IntRange, Choice], Field(discriminator="type")]


class Section(_Strict):
    """Fixed values and searched distributions of one part (model or train) of the config."""

    fixed: dict[str, Any] = {}
    search: dict[str, Distribution] = {}

    @model_validator(mode="after")
    def _disjoint(self):
        both = sorted(set(self.fixed) & set(self.search))
        if both:
            raise ValueError(f"keys both fixed and searched: {', '.join(both)}")
        return self

    def extremes(self) -> list[dict[str, Any]]:
        """Fixed values with every searched key at its low end, then at its high end."""
        ends = []
        for pick in (0, -1):
            values = dict(self.fixed)
            for key, dist in self.search.items():
                values[key] = dist.values[pick] if isinstance(dist, Choice) else (dist.low, dist.high)[pick]
            ends.append(values)
        return ends


class Budget(_Strict):
    """Per-trial budget: epochs, and ASHA's grace period and reduction factor."""

    max_epochs: int = Field(ge=1)
    grace_period: int = Field(ge=1)
    reduction_factor: float = Field(ge=2)

    @model_validator(mode="after")
    def _grace(self):
        if self.grace_period > self.max_epochs:
            raise ValueError(f"grace_period ({self.grace_period}) must be <= max_epochs ({self.max_epochs})")
        return self


class PBTSpec(_Strict):
    """What population-based training (``--strategy pbt``) may change of a running trial: the
    ``mutable`` train hyperparameters (searched ones; the architecture never changes, since an
    exploiting trial continues the copied checkpoint), every ``perturbation_interval`` epochs."""

    mutable: list[str] = Field(min_length=1)
    perturbation_interval: int = Field(1, ge=1)


class Profile(_Strict):
    img_size: int | None = Field(None, ge=16)
    # GPU share of a trial when the study's gpus_per_trial is auto and the cluster has GPUs;
    # None = the profile's default (tuner.study.resources.PROFILE_GPU_SHARE).
    gpus_per_trial: float | None = Field(None, gt=0, le=1)
    model: Section = Section()
    train: Section = Section()
    budget: Budget
    pbt: PBTSpec | None = None


class SearchSpaceFile(_Strict):
    family: str
    profiles: dict[Literal[PROFILES], Profile]


class SearchSpace(_Strict):
    """One family's search space in one profile; see the module docstring for the YAML."""

    family: str
    profile: str
    img_size: int | None
    gpus_per_trial: float | None = None
    budget: Budget
    model: Section
    train: Section
    pbt: PBTSpec | None = None

    def pbt_problem(self) -> str | None:
        """Why ``--strategy pbt`` cannot run on this space (no ``pbt`` section, or mutable keys
        that are not searched train hyperparameters: a file may fix one that its ``pbt``
        section still names), or None. Checked only for PBT studies."""
        where = f"search_spaces/{self.family}.yaml, profiles.{self.profile}.pbt.mutable"
        if self.pbt is None:
            return f"{self.family} declares no mutable hyperparameters ({where})"
        unknown = [k for k in self.pbt.mutable if k not in self.train.search]
        if unknown:
            return (f"{where}: {unknown} are not searched train hyperparameters; allowed: "
                    f"{', '.join(self.train.search)}")
        return None

    def pb2_problem(self) -> str | None:
        """Why ``--strategy pb2`` cannot run on this space: :meth:`pbt_problem`, or a mutable
        hyperparameter that is a choice (PB2 models numeric ranges only), or None."""
        problem = self.pbt_problem()
        if problem:
            return problem
        choices = [k for k in self.pbt.mutable if isinstance(self.train.search[k], Choice)]
        if choices:
            return (f"search_spaces/{self.family}.yaml, profiles.{self.profile}.pbt.mutable: "
                    f"{choices} are choices; PB2 perturbs numeric ranges only (loguniform, "
                    "uniform, int)")
        return None

    def pb2_bounds(self) -> dict[str, dict[str, list[float]]]:
        """PB2's ``hyperparam_bounds``: ``{"train": {key: [low, high]}}`` of the declared
        mutable hyperparameters (:meth:`pb2_problem` says whether they are usable)."""
        if self.pbt is None:
            return {}
        return {"train": {key.split("/", 1)[1]: [float(low), float(high)]
                          for key, (low, high, _) in self.mutable_ranges().items()}}

    def mutable_ranges(self) -> dict[str, tuple[float, float, int | None]]:
        """``train/<key>`` -> (low, high, integer step or None) of the declared mutable numeric
        hyperparameters: where a PBT perturbation (a factor of 0.8 or 1.2) or a PB2 proposal
        (a float) is brought back into the search space."""
        if self.pbt is None:
            return {}
        ranges = {}
        for key in self.pbt.mutable:
            dist = self.train.search.get(key)
            if isinstance(dist, _Range):
                ranges[f"train/{key}"] = (dist.low, dist.high,
                                          dist.step if isinstance(dist, IntRange) else None)
        return ranges

    def mutations(self) -> dict[str, dict[str, Any]]:
        """PBT's ``hyperparam_mutations``: ``{"train": {key: ray.tune domain}}`` of the declared
        mutable hyperparameters (:meth:`pbt_problem` says whether they are usable)."""
        if self.pbt is None:
            return {}
        return {"train": {k: self.train.search[k].tune() for k in self.pbt.mutable}}

    def param_space(self) -> dict[str, dict[str, Any]]:
        """``{"model": {...}, "train": {...}}`` of fixed values and ``ray.tune`` distributions."""
        return {part: {**sec.fixed, **{k: d.tune() for k, d in sec.search.items()}}
                for part, sec in (("model", self.model), ("train", self.train))}

    def grid(self, points: int = 3) -> dict[str, list]:
        """The grid strategy's values of each searched hyperparameter, by Optuna's name of it
        (``model/depth``): ``points`` per numeric range (log-spaced for loguniform), every
        value of a choice."""
        return {f"{part}/{k}": d.grid(points)
                for part, sec in (("model", self.model), ("train", self.train))
                for k, d in sec.search.items()}

    def sample(self, seed: int) -> dict[str, dict[str, Any]]:
        """One concrete configuration, drawn with numpy from ``seed`` (same nesting)."""
        rng = np.random.default_rng(seed)
        return {part: {**sec.fixed, **{k: d.draw(rng) for k, d in sec.search.items()}}
                for part, sec in (("model", self.model), ("train", self.train))}


def default_path(family: str) -> Path:
    """``<repo>/search_spaces/<family>.yaml``, found relative to the tuner package."""
    return Path(__file__).resolve().parents[2] / "search_spaces" / f"{family}.yaml"


def _fail(path: Path, key: str, problem: str) -> SearchSpaceError:
    return SearchSpaceError(f"{path}: {key}: {problem}")


def _check_train(path: Path, prefix: str, section: Section) -> None:
    allowed = ", ".join(TrainHParams.model_fields)
    for key in [*section.fixed, *section.search]:
        if key not in TrainHParams.model_fields:
            raise _fail(path, f"{prefix}.{key}", f"unknown training setting; allowed: {allowed}")
    for values in section.extremes():  # both ends of every range must be valid settings
        try:
            TrainHParams(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = err["loc"][0]
            where = "fixed" if key in section.fixed else "search"
            raise _fail(path, f"{prefix}.{where}.{key}", f"{err['msg']} (got {err['input']!r})") from None


def _check_model(path: Path, prefix: str, family: str, section: Section, img_size: int,
                 build: bool) -> None:
    from tuner.models import build_model, family_info

    allowed = family_info(family).hparams
    for key in [*section.fixed, *section.search]:
        if key not in allowed:
            raise _fail(path, f"{prefix}.{key}", f"family {family!r} has no such hyperparameter; "
                        f"allowed: {', '.join(allowed)}")
    if not build:
        return
    import torch

    base = section.extremes()[0]
    for key, dist in section.search.items():  # each choice the family must accept
        options = dist.values if isinstance(dist, Choice) else []
        for value in options:
            try:
                model = build_model(family, img_size=img_size, **{**base, key: value})
                with torch.no_grad():
                    model.eval()(torch.zeros(1, 1, img_size, img_size))
            except Exception as exc:  # any failure is the family rejecting the value
                raise _fail(path, f"{prefix}.search.{key}",
                            f"family {family!r} rejects value {value!r}: {exc}") from None


def load_search_space(family: str, profile: str = "gpu", path: Path | None = None, *,
                      check_build: bool = True) -> SearchSpace:
    """Load and validate ``family``'s search space in ``profile``.

    Args:
        family: a registered model family.
        profile: ``"gpu"`` (the real search) or ``"micro"`` (CPU tests and the demo).
        path: YAML file; default ``search_spaces/<family>.yaml`` in the repository.
        check_build: also build (and run on one blank image) the model for every value of every
            model ``choice``, so a value the family rejects fails here rather than in a trial.

    Raises:
        SearchSpaceError: naming the file, the offending key and what is allowed.
    """
    path = Path(path) if path is not None else default_path(family)
    if profile not in PROFILES:
        raise SearchSpaceError(f"{path}: unknown profile {profile!r}; allowed: {', '.join(PROFILES)}")
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SearchSpaceError(f"{path}: no search-space file for family {family!r}") from None
    except yaml.YAMLError as exc:
        raise SearchSpaceError(f"{path}: YAML syntax error: {yaml_problem(exc)}") from None
    try:
        parsed = SearchSpaceFile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        problem = err["msg"]
        if err["type"] == "extra_forbidden":
            problem = "unknown key"
        raise _fail(path, key or "<top>", f"{problem} (got {err.get('input')!r})") from None
    if parsed.family != family:
        raise _fail(path, "family", f"file is for {parsed.family!r}, expected {family!r}")
    if profile not in parsed.profiles:
        raise _fail(path, "profiles", f"missing profile {profile!r}; present: {', '.join(parsed.profiles)}")
    prof = parsed.profiles[profile]
    prefix = f"profiles.{profile}"
    _check_train(path, f"{prefix}.train", prof.train)
    _check_model(path, f"{prefix}.model", family, prof.model, prof.img_size or 64, check_build)
    return SearchSpace(family=family, profile=profile, img_size=prof.img_size,
                       gpus_per_trial=prof.gpus_per_trial, budget=prof.budget,
                       model=prof.model, train=prof.train, pbt=prof.pbt)
