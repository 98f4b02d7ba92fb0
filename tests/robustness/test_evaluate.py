"""The robustness report: its table, plot, metrics, MLflow-valid names and the shift floor."""

from __future__ import annotations

import pytest

from tuner.robustness.evaluate import (RobustnessReport, ShiftResult, floor_problem,
                                       format_robustness, write_robustness)
from tuner.robustness.shifts import SHIFTS


def _report() -> RobustnessReport:
    base = ShiftResult(name="in_distribution", kind="none", severity=None, auc_macro=0.95,
                       acc=0.85, ece=0.03, n_images=90)
    shifts = tuple(ShiftResult(name=name, kind=s.kind, severity=s.severity,
                               auc_macro=0.95 - 0.02 * i, acc=0.8, ece=0.05, n_images=90)
                   for i, (name, s) in enumerate(SHIFTS.items()))
    return RobustnessReport(base=base, shifts=shifts)


def test_scores_table_and_metrics():
    report = _report()
    worst = report.worst()
    assert worst.name == list(SHIFTS)[-1] and worst.auc_macro == pytest.approx(0.95 - 0.14)
    assert report.score("worst") == worst.auc_macro
    assert report.score("mean") == pytest.approx(0.95 - 0.07)
    metrics = report.metrics()
    assert metrics["test_robust_auc_worst"] == worst.auc_macro
    assert metrics["test_auc_macro.noise_x2"] == pytest.approx(0.93)
    text = format_robustness(report).splitlines()
    assert text[2].startswith("in_distribution") and "+0.0000" in text[2]
    assert text[-1].startswith("mean over shifts 0.8800; worst 0.8100")


def test_every_metric_name_is_one_mlflow_accepts():
    from mlflow.utils.validation import _validate_metric_name

    for name in _report().metrics():
        _validate_metric_name(name)


def test_the_floor_names_the_shift_and_both_aucs():
    report = _report()
    assert floor_problem(report, None, "m") is None and floor_problem(report, 0.8, "m") is None
    problem = floor_problem(report, 0.9, "trial t (vit)")
    assert problem == ("trial t (vit) falls to macro AUC 0.8100 on shift instrument_model_iii "
                       "(in distribution 0.9500), below the shift floor 0.9")


def test_files_of_the_report(tmp_path):
    folder = write_robustness(tmp_path / "r", _report(), "title")
    assert {p.name for p in folder.iterdir()} == {"robustness.json", "robustness.csv",
                                                  "robustness.png"}
    assert (folder / "robustness.png").stat().st_size > 10_000
    assert len((folder / "robustness.csv").read_text().splitlines()) == 2 + len(SHIFTS)
