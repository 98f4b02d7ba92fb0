"""Warm start (tuner/study/warm_start.py): the fit check alone, then an earlier study's best
configurations as a new study's first trials, through ``python tuner/run.py``; and the
searchers' Optuna studies those two studies left, through ``lenstune dashboard``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.servers import free_port
from tests.study.studies import REPO, run_args, run_study_process, trial_runs
from tuner.study.config import ConfigError, flatten
from tuner.study.search_space import load_search_space
from tuner.study.warm_start import configuration_of, warm_start_points
from tuner.tracking import schema


def _params(space, seed: int) -> dict[str, str]:
    """MLflow params of a trial drawn from ``space`` (the trial runs' format)."""
    return {k: str(v) for k, v in flatten(space.sample(seed)).items()}


def test_the_best_distinct_configurations_come_first():
    space = load_search_space("vit", "micro")
    trials = [(_params(space, s), score) for s, score in ((1, 0.6), (2, 0.9), (3, float("nan")),
                                                          (4, 0.7))]
    trials.append((_params(space, 2), 0.8))  # the same configuration again
    points = warm_start_points(space, trials, source="s", top=3)
    assert [p["train/lr"] for p in points] == [space.sample(s)["train"]["lr"] for s in (2, 4, 1)]
    assert set(points[0]) == {f"{part}/{k}" for part, sec in (("model", space.model),
                                                             ("train", space.train))
                              for k in sec.search}
    assert isinstance(points[0]["model/depth"], int)


def test_a_space_that_changed_is_refused_naming_the_differences():
    space = load_search_space("vit", "micro")
    params = _params(space, 1)
    params["train.lr"] = "0.5"  # outside 3e-4..3e-3
    params["model.embed_dim"] = "64"  # fixed at 48 now
    _, problems = configuration_of(space, params)
    assert problems == ["model.embed_dim was 64, is fixed at 48 now",
                        "train.lr was 0.5, allowed now: 0.0003..0.003"]
    with pytest.raises(ConfigError, match=r"--warm-start old: the search space of family 'vit' "
                       r"differs .*2 difference\(s\): model.embed_dim was 64"):
        warm_start_points(space, [(params, 0.9)], source="old", top=2)
    with pytest.raises(ConfigError, match="no finished trial of family 'vit'"):
        warm_start_points(space, [(params, None)], source="old", top=2)


@pytest.mark.slow
def test_a_warm_started_study_begins_with_the_earlier_best(micro_dataset, tmp_path):
    runs = tmp_path / "runs"
    first = run_study_process(run_args(micro_dataset, runs, "scratch", samples=3,
                                       extra=("--strategy", "random", "--no-promote")))
    assert first.returncode == 0, first.stderr[-3000:]
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    studies, earlier = trial_runs(uri)
    source = studies[0].data.tags[schema.STUDY_TAG]
    space = load_search_space("scratch", "micro")
    searched = [f"{part}.{k}" for part, sec in (("model", space.model), ("train", space.train))
                for k in sec.search]
    ranked = sorted(earlier, key=lambda r: -r.data.metrics[schema.BEST_OBJECTIVE])
    best_two = {tuple(r.data.params[k] for k in searched) for r in ranked[:2]}

    # a family the earlier study never tuned: refused before anything is written
    refused = run_study_process(run_args(micro_dataset, runs, "vit", samples=2,
                                         extra=("--warm-start", source)))
    assert refused.returncode == 2
    assert f"--warm-start {source}: no finished trial of family 'vit'" in refused.stderr
    assert len(trial_runs(uri)[0]) == 1

    second = run_study_process(run_args(micro_dataset, runs, "scratch", samples=3, extra=(
        "--warm-start", source, "--warm-start-top", "2", "--max-concurrent", "1",
        "--no-promote")))
    assert second.returncode == 0, second.stderr[-3000:]
    studies, trials = trial_runs(uri)
    new = next(s for s in studies if s.data.tags[schema.STUDY_TAG] != source)
    assert new.data.tags[schema.WARM_START_PREFIX + "scratch"] == f"2 configuration(s) of {source} first"
    mine = sorted((r for r in trials if r.data.tags["mlflow.parentRunId"] == new.info.run_id),
                  key=lambda r: r.info.start_time)
    assert len(mine) == 3
    assert {tuple(r.data.params[k] for k in searched) for r in mine[:2]} == best_two

    # both studies' searchers kept their Optuna studies in the runs folder's storage
    listed = _lenstune("dashboard", "--runs-dir", str(runs), "--list")
    assert listed.returncode == 0, listed.stderr
    names = {f"{s.data.tags[schema.STUDY_TAG]}/scratch" for s in studies}
    for name in names:
        assert f"{name} " in listed.stdout and "3 trials" in listed.stdout, listed.stdout
    import optuna

    study = optuna.load_study(study_name=f"{new.data.tags[schema.STUDY_TAG]}/scratch",
                              storage=f"sqlite:///{runs / 'optuna.db'}")
    assert {t.user_attrs["ray_trial_id"] for t in study.trials} == {
        r.data.tags["trial_id"] for r in mine}
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    _dashboard_serves(runs, names)


def _lenstune(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuner.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def _dashboard_serves(runs: Path, names: set[str]) -> None:
    """``lenstune dashboard`` answers on 127.0.0.1 with the studies in its API."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tuner.cli", "dashboard", "--runs-dir", str(runs),
                             "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline, body = time.time() + 60, None
        while time.time() < deadline and body is None:
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    body = json.loads(r.read())
            except OSError:
                time.sleep(0.5)
        assert body is not None, "the dashboard did not answer in 60 s"
        assert {s["study_name"] for s in body["study_summaries"]} == names
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_the_dashboard_refuses_a_runs_folder_without_studies(tmp_path):
    proc = _lenstune("dashboard", "--runs-dir", str(tmp_path))
    assert proc.returncode == 2
    assert f"no Optuna storage in --runs-dir {tmp_path} (no optuna.db)" in proc.stderr


@pytest.mark.slow
def test_extend_adds_trials_to_a_finished_study_and_refuses_another_space(micro_dataset, tmp_path):
    runs = tmp_path / "runs"
    base = ("--strategy", "random", "--no-promote", "--study-name", "ext")
    first = run_study_process(run_args(micro_dataset, runs, "scratch", samples=2, extra=base))
    assert first.returncode == 0, first.stderr[-3000:]
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    before = {r.data.tags["trial_id"] for r in trial_runs(uri)[1]}

    other = run_study_process(run_args(micro_dataset, runs, "scratch", samples=2, extra=(
        *base, "--extend", "1", "--profile", "gpu")))
    assert other.returncode == 2
    assert "--extend: the search space of family 'scratch' differs" in other.stderr

    more = run_study_process(run_args(micro_dataset, runs, "scratch", samples=2,
                                      extra=(*base, "--extend", "2")))
    assert more.returncode == 0, more.stderr[-3000:]
    studies, trials = trial_runs(uri)
    assert len(studies) == 1 and studies[0].info.status == "FINISHED"
    assert studies[0].data.tags[schema.EXTENDED_PREFIX + "scratch"] == "+2 trials (now 4)"
    after = {r.data.tags["trial_id"] for r in trials}
    assert before < after and len(after) == 4
    assert all(r.data.tags[schema.STOP_REASON_TAG] == schema.STOP_COMPLETED for r in trials)
    import optuna

    searched = optuna.load_study(study_name="ext/scratch", storage=f"sqlite:///{runs / 'optuna.db'}")
    assert len(searched.trials) == 4 and all(t.state.name == "COMPLETE" for t in searched.trials)

    unknown = run_study_process(run_args(micro_dataset, runs, "scratch", samples=2, extra=(
        "--no-promote", "--study-name", "nosuch", "--extend", "1")))
    assert unknown.returncode == 2 and "--extend: no study 'nosuch'" in unknown.stderr
