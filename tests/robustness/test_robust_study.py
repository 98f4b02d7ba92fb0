"""Robust tuning end to end, as a user runs it: a tiny study on ``--objective robust_auc`` on a
dataset simulated with observing conditions drawn per image (``--conditions``), its promotion on
the test shift suite, a promotion refused by ``--shift-floor``, ``lenstune robustness`` on the
champion, and a study that trains on fresh data every epoch (``--train-data fresh``)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from mlflow import MlflowClient

from tests.study.studies import REPO, ray_env, run_args, trial_runs

pytestmark = pytest.mark.slow

SHIFTS = ("noise_x2", "noise_x4", "psf_x1.5")  # the default validation shift suite


@pytest.fixture(scope="module")
def robust_study(tmp_path_factory):
    """A robust micro study of vit on a preset simulated by the study itself with a recipe;
    (runs folder, tracking URI, the study's output)."""
    tmp = tmp_path_factory.mktemp("robust")
    recipe = tmp / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"noise_scale": [0.5, 4.0], "psf_fwhm_scale": [0.75, 1.5],
                                      "source_mag_offset": [-1.0, 1.0], "subpixel_shift_px": 0.5}))
    runs = tmp / "runs"
    args = [sys.executable, "tuner/run.py", "--family", "vit", "--profile", "micro",
            "--preset", "model_ii", "--n-per-class", "30", "--samples", "2", "--max-epochs", "2",
            "--conditions", str(recipe), "--objective", "robust_auc", "--runs-dir", str(runs),
            "--num-cpus", "2", "--max-concurrent", "2", "--experiment", "it"]
    proc = subprocess.run(args, cwd=REPO, env=ray_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return runs, f"sqlite:///{runs / 'mlflow.db'}", proc.stdout + proc.stderr


def test_a_robust_study_logs_every_shift_each_epoch_and_ranks_by_the_robust_auc(robust_study):
    runs, uri, output = robust_study
    client = MlflowClient(uri)
    studies, trials = trial_runs(uri)
    assert studies[0].data.tags["lenstune.objective"] == "val_robust_auc"
    datasets = [p for p in (runs / "data").iterdir() if p.is_dir()]
    meta = json.loads((datasets[0] / "meta.json").read_text())
    assert meta["conditions"]["noise_scale"] == [0.5, 4.0]  # the study simulated its recipe
    assert len(trials) == 2
    for run in trials:
        assert run.data.params["objective"] == "val_robust_auc"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_auc_macro")]
        for shift in SHIFTS:
            shifted = client.get_metric_history(run.info.run_id, f"val_auc_macro.{shift}")
            assert [m.step for m in shifted] == steps, shift
        robust = client.get_metric_history(run.info.run_id, "val_robust_auc")
        assert [m.step for m in robust] == steps
        for epoch in steps:  # the objective is the mean over the shifts, every epoch
            at = {s: next(m.value for m in client.get_metric_history(
                run.info.run_id, f"val_auc_macro.{s}") if m.step == epoch) for s in SHIFTS}
            value = next(m.value for m in robust if m.step == epoch)
            assert value == pytest.approx(sum(at.values()) / len(at))
    assert "robust AUC" in output  # the progress lines name the objective


def test_promotion_of_a_robust_study_is_decided_on_the_test_shift_suite(robust_study):
    _, uri, output = robust_study
    client = MlflowClient(uri, registry_uri=uri)
    champion = client.get_model_version_by_alias("lenstune-model_ii", "champion")
    assert float(champion.tags["test_robust_auc_mean"]) > 0
    assert champion.tags["test_worst_shift"] in {"noise_x0.5", "noise_x2", "noise_x4", "psf_x0.75",
                                                 "psf_x1.5", "mag_plus1", "mag_minus1",
                                                 "instrument_model_iii"}
    assert "test robust AUC (the mean over 8 shifts)" in champion.tags["lenstune.decision"]
    run = client.get_run(champion.run_id)
    assert "test_robust_auc_worst" in run.data.metrics
    assert "robustness" in {a.path for a in client.list_artifacts(champion.run_id)}
    study = client.get_run(run.data.tags["mlflow.parentRunId"])  # where lenstune report looks
    assert "robustness/robustness.png" in {a.path for a in client.list_artifacts(
        study.info.run_id, "robustness")}


def test_a_shift_floor_refuses_the_candidate_with_one_line(robust_study):
    _, uri, _ = robust_study
    proc = subprocess.run([sys.executable, "-m", "tuner.cli", "promote", "--experiment", "it",
                           "--tracking-uri", uri, "--shift-floor", "0.999", "--model-name",
                           "floored"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "below the shift floor 0.999" in errors[0], proc.stderr[-2000:]
    assert "not registered" in errors[0]
    client = MlflowClient(uri, registry_uri=uri)
    assert client.search_model_versions("name = 'floored'") == []


def test_lenstune_robustness_reports_and_logs_the_champion(robust_study, tmp_path):
    _, uri, _ = robust_study
    out = tmp_path / "robust"
    proc = subprocess.run([sys.executable, "-m", "tuner.cli", "robustness", "--model",
                           "models:/lenstune-model_ii@champion", "--tracking-uri", uri,
                           "--shifts", "noise_x2,psf_x1.5", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("in_distribution") for line in lines)
    assert any(line.startswith("noise_x2") for line in lines)
    assert any(line.startswith("mean over shifts") and "worst" in line for line in lines)
    assert {p.name for p in out.iterdir()} == {"robustness.json", "robustness.csv",
                                               "robustness.png"}
    rows = (out / "robustness.csv").read_text().splitlines()
    assert rows[0] == "name,kind,severity,auc_macro,acc,ece,n_images" and len(rows) == 4


def test_a_study_on_fresh_data_simulates_every_epoch(tmp_path):
    from tuner.data import ensure_simulated

    data = ensure_simulated(tmp_path / "data", "model_ii", 30, seed=0, img_size=32)
    runs = tmp_path / "runs"
    proc = subprocess.run(run_args(data, runs, "vit", samples=1,
                                   extra=("--max-epochs", "2", "--train-data", "fresh",
                                          "--no-promote")),
                          cwd=REPO, env=ray_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    _, trials = trial_runs(uri)
    history = MlflowClient(uri).get_metric_history(trials[0].info.run_id, "simulation_seconds")
    assert [m.step for m in history] == [1, 2] and all(m.value > 0 for m in history)
