"""Multi-objective search (tuner/study/objectives.py, tuner/models/cost.py) and promotion under
cost limits: the parts alone, then a two-objective study and `lenstune promote` as users run them."""

from __future__ import annotations

import csv
import itertools
import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.study.studies import REPO, run_args, run_study_process, trial_runs
from tuner.models.cost import count_params, measure_costs
from tuner.study.objectives import Objective, dominates, pareto_front, parse_objectives
from tuner.tracking import schema


def test_objectives_are_parsed_and_bad_ones_named():
    assert parse_objectives(["val_auc_macro:max", "latency_ms:min", "params"], "val_auc_macro") == [
        Objective("val_auc_macro", "max"), Objective("latency_ms", "min"), Objective("params", "min")]
    with pytest.raises(ValueError, match="the first objective is the study's, robust_auc_macro:max"):
        parse_objectives(["val_auc_macro:max", "params:min"], "robust_auc_macro")
    with pytest.raises(ValueError, match="'speed:min' not allowed; allowed after val_auc_macro:max: "
                       "params:min, gflops:min"):
        parse_objectives(["val_auc_macro", "speed:min"], "val_auc_macro")
    with pytest.raises(ValueError, match="name a metric twice"):
        parse_objectives(["val_auc_macro", "params", "params"], "val_auc_macro")


def test_the_front_is_mutually_non_dominated_and_dominates_the_rest():
    modes = ["max", "min", "min"]
    points = {f"t{i}": [auc, lat, size] for i, (auc, lat, size) in enumerate(
        itertools.product([0.8, 0.9, 0.95], [1.0, 2.0], [10.0, 30.0]))}
    points["tie"] = [0.95, 1.0, 10.0]  # equal to the best point: neither dominates the other
    front = pareto_front(points, modes)
    assert set(front) == {"t8", "tie"}  # 0.95 AUC at the lowest latency and size
    for a, b in itertools.permutations(front, 2):
        assert not dominates(points[a], points[b], modes)
    for k in set(points) - set(front):
        assert any(dominates(points[f], points[k], modes) for f in front), k
    assert pareto_front({"a": [0.9, 2.0], "b": [0.8, 1.0]}, ["max", "min"]) == ["a", "b"]


def test_costs_are_measured_on_the_model_and_leave_its_mode():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(),
                                torch.nn.LazyLinear(3))
    model(torch.zeros(1, 1, 16, 16))
    model.train()
    costs = measure_costs(model, 16, ["params", "latency_ms", "gflops"])
    assert costs["params"] == count_params(model) == 4 * 9 + 4 + 4 * 14 * 14 * 3 + 3
    assert costs["latency_ms"] > 0 and costs["gflops"] > 0 and model.training
    with pytest.raises(ValueError, match="'speed'"):
        measure_costs(model, 16, ["speed"])


def test_a_multi_objective_strategy_without_objectives_is_refused():
    proc = subprocess.run([sys.executable, "tuner/run.py", "--family", "scratch", "--strategy",
                           "nsga2"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "strategy nsga2 searches several objectives; give them with --objectives" in proc.stderr


def _promote(uri: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuner.cli", "promote", "--experiment", "it",
                           "--tracking-uri", uri, *extra], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_a_two_objective_study_logs_its_front_and_promotion_keeps_the_limit(micro_dataset, tmp_path):
    runs = tmp_path / "runs"
    proc = run_study_process(run_args(micro_dataset, runs, "scratch", samples=5, extra=(
        "--strategy", "nsga2", "--objectives", "val_auc_macro:max,params:min", "--no-promote")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    studies, trials = trial_runs(uri)
    study = studies[0]
    client = MlflowClient(uri)
    assert all(r.data.metrics["params"] > 0 for r in trials)
    # the front on the study run: every completed trial, the front mutually non-dominated
    path = client.download_artifacts(study.info.run_id, "pareto/scratch.csv", str(tmp_path))
    rows = list(csv.DictReader(open(path)))
    assert {r["run_id"] for r in rows} == {r.info.run_id for r in trials}
    points = {r["run_id"]: [float(r["val_auc_macro"]), float(r["params"])] for r in rows}
    front = [r["run_id"] for r in rows if r["on_front"] == "True"]
    assert front and set(front) == set(pareto_front(points, ["max", "min"]))
    for a, b in itertools.permutations(front, 2):
        assert not dominates(points[a], points[b], ["max", "min"])
    assert "pareto/scratch.png" in {a.path for a in client.list_artifacts(study.info.run_id, "pareto")}
    import optuna

    searched = optuna.load_study(study_name=f"{study.data.tags[schema.STUDY_TAG]}/scratch",
                                 storage=f"sqlite:///{runs / 'optuna.db'}")
    assert [d.name for d in searched.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert all(len(t.values) == 2 for t in searched.trials)

    # promotion under a limit that leaves some trials out takes the best of the rest
    sizes = sorted({p[1] for p in points.values()})
    assert len(sizes) > 1, points  # five sampled configurations of different sizes
    limit = int(sizes[len(sizes) // 2 - 1]) if len(sizes) > 2 else int(sizes[0])
    promoted = _promote(uri, "--max-params", str(limit))
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    kept = {k: p for k, p in points.items() if p[1] <= limit}
    assert 0 < len(kept) < len(points)
    assert f"{len(kept)} of {len(points)} completed trials have params <= {limit}" in promoted.stdout
    version = client.get_model_version_by_alias("lenstune-model_ii", "champion")
    chosen = version.tags[schema.TRIAL_RUN_TAG]
    assert chosen in kept and points[chosen][0] == max(p[0] for p in kept.values())
    refused = _promote(uri, "--max-params", str(int(sizes[0]) - 1))
    assert refused.returncode == 1
    assert f"no completed trial has params <= {int(sizes[0]) - 1}" in refused.stderr
