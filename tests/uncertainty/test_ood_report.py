import json

import mlflow
import numpy as np
import pytest
import torch

from tuner.uncertainty import Predictive
from tuner.uncertainty.ood import ood_metrics
from tuner.uncertainty.report import METHODS, evaluate, fit_method, log_report


def test_ood_metrics_separate_confident_from_uncertain():
    confident = Predictive(torch.tensor([[0.98, 0.01, 0.01]]).repeat(50, 1))
    uncertain = Predictive(torch.full((40, 3), 1 / 3))
    m = ood_metrics(confident, uncertain)
    assert m["ood_auroc_entropy"] == 1.0 and m["ood_auroc_max_prob"] == 1.0
    assert m["ood_fpr95_entropy"] == 0.0
    assert "ood_auroc_mutual_info" not in m  # deterministic predictives have no samples
    swapped = ood_metrics(uncertain, confident)
    assert swapped["ood_auroc_entropy"] == 0.0 and swapped["ood_fpr95_entropy"] == 1.0


@pytest.mark.parametrize("name", ["mc_dropout", "conformal"])
def test_report_writes_metrics_and_plots(micro, tmp_path, name):
    fitted = fit_method(name, micro.models, micro.val, train=micro.train, mc_samples=5)
    report = evaluate(fitted, micro.test, {"noisy": micro.shift}, out_dir=tmp_path)
    m = report["metrics"]
    for key in ("acc", "nll", "ece", "mce", "aurc", "brier", "auc_macro", "noisy/ood_auroc_entropy", "predict_seconds"):
        assert np.isfinite(m[key]), key
    assert m["acc"] > 0.9 and m["noisy/acc"] < m["acc"]
    names = {p.name for p in report["plots"]}
    assert {"reliability.png", "risk_coverage.png", "entropy_in_vs_out.png"} <= names
    if name == "conformal":
        assert "conformal_set_sizes.png" in names and m["conformal_coverage"] >= 0.85
        assert "noisy/conformal_set_size" in m
    else:
        assert m["forward_passes_per_image"] == 5 and "noisy/ood_auroc_mutual_info" in m
    for p in report["plots"]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "metrics.json").read_text())["method"] == name


def test_report_logs_to_mlflow_run(micro, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("unc", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp)
    fitted = fit_method("temperature", micro.models, micro.val)
    report = evaluate(fitted, micro.test, {"noisy": micro.shift}, out_dir=tmp_path / "out")
    log_report(report, run.info.run_id, tracking_uri=uri, out_dir=tmp_path / "out")
    data = client.get_run(run.info.run_id).data
    assert data.metrics["uncertainty/temperature/ece"] == pytest.approx(report["metrics"]["ece"])
    assert "uncertainty/temperature/noisy/ood_auroc_entropy" in data.metrics
    files = {f.path for f in client.list_artifacts(run.info.run_id, "uncertainty/temperature")}
    assert "uncertainty/temperature/reliability.png" in files


def test_fit_method_rejects_bad_requests(micro):
    with pytest.raises(ValueError, match="unknown uncertainty method 'bayes'; allowed: plain"):
        fit_method("bayes", micro.models, micro.val)
    with pytest.raises(ValueError, match="needs at least 2 models"):
        fit_method("ensemble", micro.models[:1], micro.val)
    assert "laplace" in METHODS
