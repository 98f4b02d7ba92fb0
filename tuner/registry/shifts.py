"""The test shift suite in promotion (:mod:`tuner.robustness`).

For a study tuned on ``robust_auc``, or whenever a shift floor is given, promotion evaluates the
candidate and the current champion on the same test shift suite (the test split's systems under
noise x0.5/x2/x4, PSF x0.75/x1.5, source magnitude +-1, Model III's instrument), records both
(version tags ``test_robust_auc_mean``, ``test_robust_auc_worst``, ``test_worst_shift``; the
candidate's run gets the per-shift metrics and ``robustness/``), and

- refuses a candidate whose worst-shift macro AUC is below the floor (nothing registered);
- for a ``robust_auc`` study, decides ``champion`` by the shift-suite AUC the study tuned for
  (its mean, or its worst with ``--robust-reduce worst``), not by the in-distribution AUC.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import NamedTuple

from tuner.tracking import schema
from tuner.tracking.reader import PromotionError


class ShiftPolicy(NamedTuple):
    """How promotion uses the shift suite: ``reduce`` (mean | worst) for a robust study's
    decision, None otherwise; ``floor``: the lowest worst-shift AUC allowed, or None."""

    reduce: str | None
    floor: float | None

    @property
    def active(self) -> bool:
        return self.reduce is not None or self.floor is not None


def shift_policy(study, floor: float | None) -> ShiftPolicy:
    """The policy of a study run (its objective tag and ``robust_reduce`` param) and a floor."""
    robust = study.data.tags.get(schema.OBJECTIVE_TAG) == schema.ROBUST_OBJECTIVE
    reduce = study.data.params.get("robust_reduce", "mean") if robust else None
    if floor is not None and not 0.0 <= floor <= 1.0:
        raise PromotionError(f"shift floor {floor} is not allowed; allowed: 0..1 (a macro AUC)")
    return ShiftPolicy(reduce, floor)


def evaluate_suite(model, config, data_root: Path, what: str):
    """``model`` on the test split and its whole shift suite (PromotionError when the dataset
    has none: it was not simulated)."""
    from tuner.robustness.evaluate import evaluate_shifts

    try:
        return evaluate_shifts(model, config, data_root, what=what)
    except ValueError as exc:
        raise PromotionError(f"cannot evaluate {what} on a shift suite: {exc}") from None


def version_tags(report) -> dict[str, str]:
    """The shift numbers a model version carries."""
    worst = report.worst()
    return {"test_robust_auc_mean": f"{report.score('mean'):.6f}",
            "test_robust_auc_worst": f"{worst.auc_macro:.6f}", "test_worst_shift": worst.name}


def log_suite(client, run_id: str, report, title: str, study_run_id: str | None = None) -> None:
    """Per-shift metrics and ``robustness/`` (table and plot) into ``run_id``; the table and
    plot also into ``study_run_id`` (where ``lenstune report`` finds them)."""
    import time

    from mlflow.entities import Metric

    from tuner.robustness.evaluate import write_robustness

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in report.metrics().items()])
    with tempfile.TemporaryDirectory(prefix="lenstune-shifts-") as tmp:
        folder = write_robustness(Path(tmp) / schema.ROBUSTNESS_ARTIFACT, report, title)
        for target in filter(None, (run_id, study_run_id)):
            client.log_artifacts(target, str(folder), schema.ROBUSTNESS_ARTIFACT)


def check_floor(report, policy: ShiftPolicy, what: str) -> None:
    """PromotionError (nothing registered) when ``what`` falls below the policy's floor."""
    from tuner.robustness.evaluate import floor_problem

    problem = floor_problem(report, policy.floor, what)
    if problem:
        raise PromotionError(f"{problem}; not registered (lower --shift-floor to accept it)")


def champion_suite(client, name: str, version: str, data_root: Path, tracking_uri: str | None,
                   work: Path):
    """The champion ``version`` of ``name`` on the test split and its shift suite, now."""
    from tuner.registry.pyfunc import load_registered

    model, config = load_registered(f"models:/{name}/{version}", tracking_uri=tracking_uri,
                                    dst_dir=work / "champion-shifts")
    return evaluate_suite(model, config, data_root, f"champion {name} version {version}")


def standing_measure(reduce: str, n_shifts: int) -> str:
    """How a robust decision names its measure in the decision line."""
    over = "the worst" if reduce == "worst" else "the mean"
    return f"test robust AUC ({over} over {n_shifts} shifts)"
