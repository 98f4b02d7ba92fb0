"""Split conformal prediction sets: APS (Romano et al. 2020) and RAPS (Angelopoulos et al. 2021).

Calibrated on held-out predictions (probs (n, C), labels (n,)), the sets contain the true class
with probability >= 1 - alpha on exchangeable test data, whatever the model. Conformity score of
label y with rank o(y) (1 = most probable) and uniform u:

    s(x, y, u) = sum of probs ranked above y + u p(y) + lam * max(0, o(y) - k_reg)

(lam = 0 gives APS). The threshold is the ceil((n+1)(1-alpha))-th smallest calibration score.
Randomised sets include y iff s(x, y, u) <= q with a fresh u per test image (exact coverage,
sets may be empty); non-randomised sets use u = 1 for calibration and include every label up to
and including the one whose cumulative score crosses q (conservative, never empty).
All arrays are numpy.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

SCORES = ("aps", "raps")


class ConformalConfig(BaseModel):
    """Settings of a split conformal predictor."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    score: str = Field("aps", description="'aps' or 'raps'")
    alpha: float = Field(0.1, gt=0.0, lt=1.0, description="miscoverage level; coverage 1 - alpha")
    randomized: bool = True
    lam: float = Field(0.01, ge=0.0, description="RAPS penalty per rank beyond k_reg")
    k_reg: int = Field(1, ge=0, description="RAPS: ranks up to k_reg are not penalised")

    def model_post_init(self, __context) -> None:
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {self.score!r}")


def _sorted(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Descending order (N, C) and the rank (0-based) of each class (N, C)."""
    order = np.argsort(-probs, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(probs.shape[1])[None].repeat(len(probs), 0), axis=1)
    return order, ranks


def all_label_scores(probs, u, lam: float = 0.0, k_reg: int = 0) -> np.ndarray:
    """Conformity scores s(x, y, u) of every label (N, C); ``u`` is a scalar or (N,)."""
    p = np.asarray(probs, dtype=np.float64)
    order, ranks = _sorted(p)
    p_sorted = np.take_along_axis(p, order, 1)
    cum_before = np.cumsum(p_sorted, 1) - p_sorted  # (N, C), in rank order
    penalty = lam * np.maximum(0, np.arange(1, p.shape[1] + 1) - k_reg)[None]  # (1, C)
    u = np.broadcast_to(np.asarray(u, dtype=np.float64).reshape(-1, 1), (len(p), 1))
    score_sorted = cum_before + u * p_sorted + penalty
    return np.take_along_axis(score_sorted, ranks, 1)


def conformal_quantile(scores, alpha: float) -> float:
    """The ceil((n+1)(1-alpha))-th smallest score; +inf when that exceeds n."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    k = math.ceil((len(s) + 1) * (1.0 - alpha))
    return float("inf") if k > len(s) else float(s[k - 1])


class SplitConformal:
    """``SplitConformal(ConformalConfig(...)).calibrate(probs, labels).predict_sets(probs)``."""

    def __init__(self, config: ConformalConfig | None = None, **kwargs):
        self.config = config or ConformalConfig(**kwargs)
        self.threshold: float | None = None

    @property
    def _lam(self) -> float:
        return self.config.lam if self.config.score == "raps" else 0.0

    def calibrate(self, probs, labels, *, u=None, seed: int = 0) -> "SplitConformal":
        """Set the threshold from calibration probs (n, C) and labels (n,).

        u: (n,) uniforms for the scores; default: drawn from ``seed`` when randomized, else 1.
        """
        p = np.asarray(probs, dtype=np.float64)
        y = np.asarray(labels).astype(np.int64)
        if p.ndim != 2 or y.shape != (len(p),) or len(p) == 0:
            raise ValueError(f"expected probs (n, C) and labels (n,) with n > 0, got {p.shape} and {y.shape}")
        if u is None:
            u = np.random.default_rng(seed).uniform(size=len(p)) if self.config.randomized else 1.0
        scores = all_label_scores(p, u, self._lam, self.config.k_reg)[np.arange(len(y)), y]
        self.n_calibration = len(y)
        self.threshold = conformal_quantile(scores, self.config.alpha)
        return self

    def predict_sets(self, probs, *, u=None, seed: int = 1) -> np.ndarray:
        """Boolean membership (N, C): True where the class is in the image's prediction set."""
        if self.threshold is None:
            raise RuntimeError("call calibrate(probs, labels) before predict_sets")
        p = np.asarray(probs, dtype=np.float64)
        if self.config.randomized:
            u = np.random.default_rng(seed).uniform(size=len(p)) if u is None else u
            return all_label_scores(p, u, self._lam, self.config.k_reg) <= self.threshold
        # include every label whose score before its own mass is below the threshold: this
        # keeps the label that crosses it, so the set is never empty
        return all_label_scores(p, 0.0, self._lam, self.config.k_reg) < self.threshold


def set_metrics(sets, labels, class_names: list[str] | None = None) -> dict[str, float]:
    """Empirical coverage and mean set size, overall and per true class, flat keys."""
    s = np.asarray(sets, dtype=bool)
    y = np.asarray(labels).astype(np.int64)
    covered = s[np.arange(len(y)), y]
    size = s.sum(1)
    names = class_names or [str(c) for c in range(s.shape[1])]
    out = {"coverage": float(covered.mean()), "set_size": float(size.mean()), "empty_sets": float((size == 0).mean())}
    for c, name in enumerate(names):
        mask = y == c
        if mask.any():
            out[f"coverage_{name}"] = float(covered[mask].mean())
            out[f"set_size_{name}"] = float(size[mask].mean())
    return out
