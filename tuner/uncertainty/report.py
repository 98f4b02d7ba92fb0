"""Evaluate one uncertainty method on a test split and on shifted data sets: metrics + plots,
and log them to MLflow under a given run.

Inputs are trained models and splits: anything with ``.images`` (N, 1, H, W) and ``.labels``
(N,) tensors, such as :class:`tuner.data.Split`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tuner import metrics
from tuner.uncertainty import plots
from tuner.uncertainty.conformal import ConformalConfig, SplitConformal, set_metrics
from tuner.uncertainty.ensemble import DeepEnsemble
from tuner.uncertainty.laplace import LastLayerLaplace
from tuner.uncertainty.mc_dropout import MCDropout
from tuner.uncertainty.ood import ood_metrics
from tuner.uncertainty.predictive import Deterministic, Predictive, UncertaintyMethod
from tuner.uncertainty.temperature import TemperatureScaled

METHODS = ("plain", "temperature", "mc_dropout", "ensemble", "hyper_ensemble", "laplace", "conformal")


@dataclass
class FittedMethod:
    """A method ready to predict, the conformal predictor on its probabilities (if any), and
    what fitting it cost (seconds, wall clock)."""

    name: str
    method: UncertaintyMethod
    conformal: SplitConformal | None = None
    fit_seconds: float = 0.0
    info: dict[str, float] = field(default_factory=dict)


def fit_method(
    name: str,
    models: list[nn.Module],
    val,
    *,
    train=None,
    mc_samples: int = 20,
    laplace_structure: str = "full",
    hyper_k: int = 5,
    conformal: ConformalConfig | None = None,
    seed: int = 0,
    weights: list[float] | None = None,
) -> FittedMethod:
    """Build and fit method ``name`` (one of METHODS) around trained ``models``.

    val: validation split (temperature, hyper-ensemble selection, conformal calibration).
    train: split the Laplace GGN is accumulated over (defaults to ``val``).
    The ensembles use every model (``weights``: member weights of "ensemble", default uniform,
    e.g. those of a registered hyper-ensemble); the other methods use ``models[0]``.
    For "conformal", the base is temperature scaling fitted on the first half of ``val``
    and the sets are calibrated on the second half, so calibration data stay exchangeable
    with test data.
    """
    if name not in METHODS:
        raise ValueError(f"unknown uncertainty method {name!r}; allowed: {', '.join(METHODS)}")
    if not models:
        raise ValueError("need at least one trained model")
    if name in ("ensemble", "hyper_ensemble") and len(models) < 2:
        raise ValueError(f"method {name!r} needs at least 2 models, got {len(models)}")
    t0 = time.perf_counter()
    info: dict[str, float] = {}
    cp = None
    if name == "plain":
        method: UncertaintyMethod = Deterministic(models[0])
    elif name == "temperature":
        method = TemperatureScaled.fit(models[0], val.images, val.labels)
        info["temperature"] = method.scaler.temperature
    elif name == "mc_dropout":
        method = MCDropout(models[0], T=mc_samples, seed=seed)
    elif name == "ensemble":
        method = DeepEnsemble(models, weights)
    elif name == "hyper_ensemble":
        method = DeepEnsemble.hyper(models, val.images, val.labels, k=hyper_k)
        info["members_used"] = float(np.count_nonzero(method.weights))
    elif name == "laplace":
        data = train if train is not None else val
        la = LastLayerLaplace(models[0], hessian_structure=laplace_structure).fit(data.images, data.labels)
        method = _LaplaceMethod(la, n_samples=mc_samples * 5, seed=seed)
        info["prior_precision"] = la.prior_precision
    else:  # conformal
        half = val.labels.shape[0] // 2
        if half < 10:
            raise ValueError(f"conformal calibration needs at least 20 validation images, got {2 * half}")
        method = TemperatureScaled.fit(models[0], val.images[:half], val.labels[:half])
        probs_cal = method.predict(val.images[half:]).probs.numpy()
        cp = SplitConformal(conformal or ConformalConfig()).calibrate(probs_cal, val.labels[half:].numpy(), seed=seed)
        info.update(temperature=method.scaler.temperature, conformal_threshold=cp.threshold)
    return FittedMethod(name, method, cp, time.perf_counter() - t0, info)


class _LaplaceMethod:
    def __init__(self, la: LastLayerLaplace, n_samples: int, seed: int):
        self.la, self.n_samples, self.seed = la, n_samples, seed

    def predict(self, images: torch.Tensor) -> Predictive:
        return self.la.predict(images, link="probit", n_samples=self.n_samples, seed=self.seed)


def predictive_metrics(pred: Predictive, labels, class_names: list[str]) -> dict[str, float]:
    """Accuracy, AUCs, NLL, Brier, ECE (15 bins), MCE, AURC, mean entropy and mutual information."""
    p, y = pred.probs.double().numpy(), np.asarray(labels)
    out = metrics.classification_report(p, y, class_names)
    out.update(mce=metrics.mce(p, y), aurc=metrics.aurc(p, y))
    out.update(mean_entropy=float(pred.entropy().mean()), mean_mutual_info=float(pred.mutual_information().mean()))
    return out


def _timed_predict(method: UncertaintyMethod, images) -> tuple[Predictive, float]:
    t0 = time.perf_counter()
    pred = method.predict(images)
    return pred, time.perf_counter() - t0


def evaluate(
    fitted: FittedMethod,
    test,
    shifts: dict[str, Any] | None = None,
    *,
    class_names: list[str] | None = None,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Metrics of a fitted method on ``test`` and each shifted split, plus plots in ``out_dir``.

    Returns {"method", "metrics" (flat, MLflow-ready: test metrics unprefixed, shifted ones as
    ``<shift>/<metric>``), "plots" (paths)}. Shift metrics include OOD detection (test vs shift)
    and, for conformal, coverage and set size there.
    """
    shifts = shifts or {}
    names = list(class_names or getattr(getattr(test, "meta", None), "class_names", None) or [])
    pred, seconds = _timed_predict(fitted.method, test.images)
    names = names or [str(c) for c in range(pred.probs.shape[1])]
    y = test.labels.numpy()
    m = predictive_metrics(pred, y, names)
    m.update(forward_passes_per_image=float(pred.forward_passes), predict_seconds=seconds,
             fit_seconds=fitted.fit_seconds, **fitted.info)
    sizes: dict[str, np.ndarray] = {}
    if fitted.conformal is not None:
        sets = fitted.conformal.predict_sets(pred.probs.numpy())
        m.update({f"conformal_{k}": v for k, v in set_metrics(sets, y, names).items()})
        sizes["test"] = sets.sum(1)
    shift_preds: dict[str, Predictive] = {}
    for sname, split in shifts.items():
        sp, _ = _timed_predict(fitted.method, split.images)
        shift_preds[sname] = sp
        sm = predictive_metrics(sp, split.labels.numpy(), names)
        sm.update(ood_metrics(pred, sp))
        if fitted.conformal is not None:
            sets = fitted.conformal.predict_sets(sp.probs.numpy())
            sm.update({f"conformal_{k}": v for k, v in set_metrics(sets, split.labels.numpy(), names).items()})
            sizes[sname] = sets.sum(1)
        m.update({f"{sname}/{k}": v for k, v in sm.items()})
    plot_paths: list[Path] = []
    if out_dir is not None:
        out = Path(out_dir)
        p = pred.probs.double().numpy()
        plot_paths.append(plots.reliability_diagram(p, y, out / "reliability.png", title=f"{fitted.name}: reliability"))
        plot_paths.append(plots.risk_coverage_curve({fitted.name: (p, None)}, y, out / "risk_coverage.png"))
        if shift_preds:
            plot_paths.append(plots.entropy_histograms(
                pred.entropy().numpy(), {k: v.entropy().numpy() for k, v in shift_preds.items()},
                out / "entropy_in_vs_out.png", n_classes=len(names)))
        if sizes:
            plot_paths.append(plots.set_size_histogram(sizes, out / "conformal_set_sizes.png", n_classes=len(names)))
        (out / "metrics.json").write_text(json.dumps({"method": fitted.name, "metrics": m}, indent=2, sort_keys=True))
    return {"method": fitted.name, "metrics": m, "plots": plot_paths}


def log_report(report: dict[str, Any], run_id: str, *, tracking_uri: str | None = None, out_dir: Path | None = None) -> None:
    """Log a report's metrics (keys ``uncertainty/<method>/<metric>``) and the files in ``out_dir``
    (artifact path ``uncertainty/<method>``) to an existing MLflow run."""
    from tuner.tracking.store import mlflow_client
    from mlflow.entities import Metric

    client = mlflow_client(tracking_uri)
    now = int(time.time() * 1000)
    prefix = f"uncertainty/{report['method']}"
    entries = [
        Metric(f"{prefix}/{k}".replace(" ", "_"), float(v), now, 0)
        for k, v in report["metrics"].items()
        if isinstance(v, (int, float)) and np.isfinite(v)
    ]
    for i in range(0, len(entries), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=entries[i : i + 1000])
    if out_dir is not None:
        client.log_artifacts(run_id, str(out_dir), artifact_path=prefix)
