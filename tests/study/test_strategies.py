"""Search strategies (tuner/study/strategies.py) and study-level stopping (tuner/study/stopping.py):
the parts alone, then tiny studies through ``python tuner/run.py`` as a user runs them."""

from __future__ import annotations

import json
import math

import pytest
from mlflow.tracking import MlflowClient

from tests.study.studies import PYTHON, REPO, run_args, run_study_process, trial_runs
from tuner.study.search_space import load_search_space
from tuner.study.stopping import StudyStopper
from tuner.study.strategies import STRATEGIES, get_strategy
from tuner.tracking import schema


def test_an_unknown_strategy_is_refused_naming_the_allowed_ones():
    with pytest.raises(ValueError, match="'pbt2' not known; allowed: asha-tpe, asha-gp, random, "
                       "grid, pbt, pb2, hyperband-bohb, nsga2, mo-tpe"):
        get_strategy("pbt2")
    import subprocess

    proc = subprocess.run([PYTHON, "tuner/run.py", "--family", "vit", "--strategy", "bayes"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--strategy: invalid choice: 'bayes'" in proc.stderr and "asha-gp" in proc.stderr


def test_the_grid_covers_every_searched_parameter_under_optunas_names():
    from ray.tune.search.optuna import OptunaSearch

    space = load_search_space("vit", "micro")
    grid = space.grid(3)
    assert set(grid) == set(OptunaSearch.convert_search_space(space.param_space()))
    assert grid["model/depth"] == [2, 3]  # int range 2..3: both values, not three
    assert grid["model/patch_size"] == [4, 8]
    lr = grid["train/lr"]  # loguniform 3e-4..3e-3: log-spaced
    assert len(lr) == 3 and math.isclose(lr[1], math.sqrt(3e-4 * 3e-3))
    assert grid["train/label_smoothing"] == [0.0, 0.05, 0.1]


def test_only_the_asha_strategies_stop_trials_early():
    assert [s.name for s in STRATEGIES.values() if s.early_stopping] == ["asha-tpe", "asha-gp"]
    assert [s.name for s in STRATEGIES.values() if s.multi_objective] == ["nsga2", "mo-tpe"]
    assert get_strategy("asha-gp").early_stop(1, 3) == (
        schema.STOP_ASHA, "stopped by ASHA after 1 of 3 epochs")
    assert get_strategy("hyperband-bohb").early_stop(2, 9) == (
        schema.STOP_HYPERBAND, "stopped by HyperBand (BOHB) after 2 of 9 epochs")
    for name in ("random", "pbt", "pb2"):
        with pytest.raises(ValueError, match="stops no trial early"):
            get_strategy(name).early_stop(1, 3)


def test_each_strategy_names_the_epochs_where_it_decides_and_how_a_trial_ended():
    space = load_search_space("levit", "gpu")  # budget: grace 5, rf 3; PBT every 5 epochs
    assert get_strategy("asha-tpe").decision_epochs(space, 50) == [5, 15, 45]
    assert get_strategy("asha-tpe").decides_at == "ASHA's rungs"
    assert get_strategy("hyperband-bohb").decision_epochs(space, 50) == [1, 3, 5, 9, 15, 16, 27, 45, 48]
    assert get_strategy("pbt").decision_epochs(space, 20) == [5, 10, 15]
    for name in ("random", "grid", "nsga2"):
        assert get_strategy(name).decision_epochs(space, 50) == []
        assert get_strategy(name).decides_at is None
    asha = get_strategy("asha-tpe")
    assert asha.trial_end(50, 50) == (schema.STOP_COMPLETED, "")
    assert asha.trial_end(15, 50) == (schema.STOP_ASHA, "stopped by ASHA after 15 of 50 epochs")
    assert asha.trial_end(15, 50, schema.STOP_BUDGET, "the budget was spent") == (
        schema.STOP_BUDGET, "the budget was spent; the trial had trained 15 of 50 epochs")
    assert asha.trial_end(50, 50, schema.STOP_BUDGET, "spent")[0] == schema.STOP_COMPLETED


@pytest.mark.parametrize("max_t, eta", [(16, 4), (3, 2), (50, 3), (81, 3), (10, 3)])
def test_hyperband_checkpoints_at_every_milestone_rays_brackets_pause_at(max_t, eta):
    from ray.tune.schedulers import HyperBandForBOHB

    from tuner.study.strategies import milestone_epochs

    scheduler = HyperBandForBOHB(time_attr="epoch", max_t=max_t, reduction_factor=eta,
                                 metric="m", mode="max")
    expected = set()
    for s in range(scheduler._s_max_1):
        if scheduler._get_r0(s) == 0:
            continue
        bracket = scheduler._create_bracket(s)
        while bracket._cumul_r < max_t:  # Ray's own milestone update
            expected.add(bracket._cumul_r)
            bracket._r = int(min(bracket._r * eta, max_t))
            bracket._cumul_r = bracket._r
    assert milestone_epochs(max_t, eta) == sorted(expected)
    assert milestone_epochs(16, 4) == [1, 4]


def test_bohb_searches_every_value_of_the_space_in_plain_python_values():
    """Ray's conversion drops the top of a two-value int range; BOHB here draws both, and
    hands out ints, floats and strings (not numpy scalars) inside the declared ranges."""
    from ray.tune.search.sample import Categorical, Float, Integer

    from tuner.study.hyperband import PlainTuneBOHB

    space = load_search_space("scratch", "micro")
    searcher = PlainTuneBOHB(metric="m", mode="max", seed=3)
    searcher.set_search_properties("m", "max", space.param_space())
    configs = [searcher.suggest(f"t{i}") for i in range(40)]
    depth = {c["model"]["depth"] for c in configs}
    assert depth == {1, 2}, depth
    for config in configs:
        for part in ("model", "train"):
            for key, value in config[part].items():
                assert type(value) in (int, float, str, bool), (key, type(value))
                domain = space.param_space()[part][key]
                if isinstance(domain, Categorical):
                    assert value in domain.categories
                elif isinstance(domain, (Float, Integer)):
                    assert domain.lower <= value <= domain.upper, (key, value)
    assert PlainTuneBOHB(metric="m", mode="max", seed=3).convert_search_space(
        space.param_space()).get("model/depth").upper == 2


def test_pbt_and_pb2_keep_new_values_in_the_declared_ranges():
    from tuner.study.config import ConfigError, StudyConfig
    from tuner.study.driver import check_strategy
    from tuner.study.search import KeepInRange
    from tuner.study.strategies import search_plan

    space = load_search_space("levit", "micro")
    plan = search_plan(get_strategy("pb2"), space, samples=5, max_epochs=3, grid_points=3,
                       tpe_told="first-rung")
    assert (plan.samples, plan.perturbation_interval) == (5, space.pbt.perturbation_interval)
    assert plan.mutations == {"train": {k: [space.train.search[k].low, space.train.search[k].high]
                                        for k in space.pbt.mutable}}
    assert plan.ranges == {f"train/{k}": (space.train.search[k].low,
                                              space.train.search[k].high, None)
                               for k in space.pbt.mutable}
    # PBT's factor of 1.2 or 0.8 and PB2's floats, brought back into the search space
    keep = KeepInRange({**plan.ranges, "train/warmup_epochs": (0, 6, 2)})
    assert keep({"model": {"depth": 2}, "train": {
        "aug_strength": 0.9 * 1.2, "lr": 0.0003 * 0.8, "weight_decay": 0.01,
        "warmup_epochs": 2.6, "batch_size": 16}}) == {"model": {"depth": 2}, "train": {
            "aug_strength": 1.0, "lr": 0.0003, "weight_decay": 0.01, "warmup_epochs": 2,
            "batch_size": 16}}
    assert keep({"train": {"warmup_epochs": 9.0}})["train"]["warmup_epochs"] == 6
    # a choice cannot be perturbed by PB2's Gaussian process: refused before Ray starts
    choice = space.model_copy(update={"pbt": space.pbt.model_copy(
        update={"mutable": ["lr", "batch_size"]})})
    check_strategy(StudyConfig(families=["levit"], strategy="pbt"), {"levit": choice})
    with pytest.raises(ConfigError, match=r"--strategy pb2 needs .*\['batch_size'\] are choices; "
                       "PB2 perturbs numeric ranges only"):
        check_strategy(StudyConfig(families=["levit"], strategy="pb2"), {"levit": choice})


def test_the_plateau_counts_trials_that_ended_without_beating_the_best():
    stopper = StudyStopper("val_auc_macro", plateau=2)
    for trial, score in (("a", 0.6), ("b", 0.7), ("c", 0.65), ("d", float("nan"))):
        stopper("x" + trial, {"val_auc_macro": score, "time_this_iter_s": 1.0})
        assert not stopper.stop_all()
        stopper.trial_ended("x" + trial)
    # b improved on a; c did not, d (no finite score: a failure) did not: two in a row
    assert stopper.stop_all() and stopper.reason == schema.STOP_PLATEAU
    assert "best val_auc_macro (0.7000) has not improved in the last 2 trials" in stopper.message
    stopper.trial_ended("xe")  # trials stopped with the study change nothing
    assert stopper.since_best == 2


def test_the_device_budget_sums_epoch_seconds_times_the_trials_share():
    stopper = StudyStopper("val_auc_macro", budget_device_hours=0.5, device_share=0.25)
    stopper("a", {"val_auc_macro": 0.5, "time_this_iter_s": 3600.0})  # 0.25 GPU-hours
    assert not stopper.stop_all()
    stopper("b", {"val_auc_macro": 0.5, "time_this_iter_s": 3600.0})
    assert stopper.stop_all() and stopper.reason == schema.STOP_BUDGET
    assert "0.5000 GPU-hours of the budget of 0.5" in stopper.message
    assert stopper.summary()["gpu_hours"] == "0.500000"
    assert not StudyStopper("val_auc_macro").active


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["asha-gp", "random", "grid", "mo-tpe", "pb2",
                                      "hyperband-bohb"])
def test_each_strategy_runs_a_tiny_study_and_names_its_stops(strategy, micro_dataset, tmp_path):
    runs = tmp_path / "runs"
    objectives = (("--objectives", "val_auc_macro:max,params:min")
                  if get_strategy(strategy).multi_objective else ())
    proc = run_study_process(run_args(micro_dataset, runs, "scratch", samples=4, extra=(
        "--strategy", strategy, *objectives, "--no-promote")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    studies, trials = trial_runs(uri)
    study = studies[0]
    assert study.data.params["strategy"] == strategy
    assert study.data.tags[schema.STRATEGY_TAG] == get_strategy(strategy).summary
    assert len(trials) == 4 and all(r.info.status in ("FINISHED", "KILLED") for r in trials)
    max_epochs = load_search_space("scratch", "micro").budget.max_epochs
    client = MlflowClient(uri)
    for run in trials:
        epochs = len(client.get_metric_history(run.info.run_id, "val_auc_macro"))
        reason = run.data.tags[schema.STOP_REASON_TAG]
        if get_strategy(strategy).population:
            # PB2 stops no trial; one that copied a later checkpoint of another trial logs only
            # the epochs it trained itself, and still completed the budget
            assert reason == schema.STOP_COMPLETED and run.info.status == "FINISHED", epochs
        elif epochs == max_epochs:
            assert reason == schema.STOP_COMPLETED
        elif strategy == "hyperband-bohb":  # stopped at a milestone of its bracket
            assert reason == schema.STOP_HYPERBAND, (reason, epochs)
            assert run.data.tags[schema.STOP_MESSAGE_TAG] == (
                f"stopped by HyperBand (BOHB) after {epochs} of {max_epochs} epochs")
        else:  # only ASHA and HyperBand end a trial early here
            assert strategy == "asha-gp" and reason == schema.STOP_ASHA, (reason, epochs)
            assert run.data.tags[schema.STOP_MESSAGE_TAG].startswith("stopped by ASHA after")
    if strategy == "hyperband-bohb":
        # brackets of 3 epochs at reduction factor 2: one starts at 3 epochs, one at 1 and
        # pauses its trials at 1 and 2; the resumed ones went on from their checkpoints,
        # every epoch logged once
        steps = [[m.step for m in client.get_metric_history(r.info.run_id, "val_auc_macro")]
                 for r in trials]
        assert all(s == list(range(1, len(s) + 1)) for s in steps), steps
        assert any(len(s) < max_epochs for s in steps) and any(len(s) == max_epochs for s in steps)
    if strategy == "grid":
        grid = load_search_space("scratch", "micro").grid(3)
        configs = {tuple(r.data.params[k.replace("/", ".")] for k in sorted(grid)) for r in trials}
        assert len(configs) == 4  # four different grid points
        for run in trials:
            for key, values in grid.items():
                assert run.data.params[key.replace("/", ".")] in {str(v) for v in values}, key


@pytest.mark.slow
@pytest.mark.parametrize("flags, reason", [
    (("--plateau", "1", "--max-concurrent", "1"), schema.STOP_PLATEAU),
    (("--budget-gpu-hours", "0.00005"), schema.STOP_BUDGET),
])
def test_the_plateau_and_the_budget_end_a_study_early_with_the_reason(
        flags, reason, micro_dataset, tmp_path):
    runs = tmp_path / "runs"
    proc = run_study_process(run_args(micro_dataset, runs, "scratch", samples=8,
                                      extra=("--strategy", "random", "--no-promote", *flags)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"scratch: the study stopped the search early: {reason}" in proc.stderr + proc.stdout
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    studies, trials = trial_runs(uri)
    study = studies[0]
    assert study.data.tags[schema.STUDY_STOP_PREFIX + "scratch"].startswith(reason + ": ")
    assert study.data.metrics["scratch.cpu_hours"] > 0
    assert 1 <= len(trials) < 8
    reasons = {r.data.tags[schema.STOP_REASON_TAG] for r in trials}
    assert reasons <= {schema.STOP_COMPLETED, reason}, reasons
    if reason == schema.STOP_BUDGET:
        # 0.18 CPU-seconds: spent in the first epoch, so the running trials were cut short
        stopped = [r for r in trials if r.data.tags[schema.STOP_REASON_TAG] == reason]
        assert stopped and all(r.info.status == "KILLED" for r in stopped)
        assert "--budget-gpu-hours" in stopped[0].data.tags[schema.STOP_MESSAGE_TAG]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["pbt", "pb2"])
def test_pbt_exploit_continues_a_better_checkpoint_and_perturbs_only_the_mutable(
        strategy, micro_dataset, tmp_path):
    # Asynchronous PBT exploits when a trial in the worst quarter reports while one in the best
    # quarter has a checkpoint: which trial reports first decides it, and a tiny study now and
    # then exploits nothing. Up to three studies are run until one exploits.
    for attempt in range(3):
        runs = tmp_path / f"runs{attempt}"
        proc = run_study_process(run_args(micro_dataset, runs, "scratch", samples=4, extra=(
            "--strategy", strategy, "--max-epochs", "6", "--max-concurrent", "4",
            "--cpus-per-trial", "0.5", "--no-promote")))
        assert proc.returncode == 0, proc.stderr[-3000:]
        uri = f"sqlite:///{runs / 'mlflow.db'}"
        _, trials = trial_runs(uri)
        assert len(trials) == 4 and all(
            r.data.tags[schema.STOP_REASON_TAG] == schema.STOP_COMPLETED for r in trials)
        if any(schema.PBT_EXPLOITS_TAG in r.data.tags for r in trials):
            break
    else:
        pytest.skip(f"asynchronous {strategy} exploited no trial in three tiny studies: "
                    "nothing to check")
    space = load_search_space("scratch", "micro")
    mutable = set(space.pbt.mutable)
    by_trial = {r.data.tags["trial_id"]: r for r in trials}
    client = MlflowClient(uri)
    exploits, records = 0, {}
    for run in trials:
        for artifact in client.list_artifacts(run.info.run_id, "pbt"):
            exploits += 1
            local = client.download_artifacts(run.info.run_id, artifact.path, str(tmp_path))
            record = json.loads(open(local).read())
            donor = by_trial[record["copied_from_trial"]]
            assert donor.info.run_id != run.info.run_id
            # the architecture of the copied checkpoint, and every train value but the mutable
            # ones as the donor had them there ("changed" is against the donor's checkpoint)
            assert record["config"]["model"] == record["donor_model"]
            assert set(record["changed"]) <= mutable, record["changed"]
            # PBT always perturbs; PB2 copies the donor's values unchanged while its Gaussian
            # process has no improvement of the donor to learn from (Ray's pb2._explore)
            assert record["changed"] or strategy == "pb2", record
            if schema.PBT_EXPLOITS_TAG not in donor.data.tags:  # the donor ran its own config
                assert {f"model.{k}": str(v) for k, v in record["config"]["model"].items()} == {
                    k: v for k, v in donor.data.params.items() if k.startswith("model.")}
                for key, value in record["config"]["train"].items():
                    if key not in mutable:
                        assert str(value) == donor.data.params[f"train.{key}"], key
            records.setdefault(run.info.run_id, []).append(record)
    assert exploits >= 1, "an exploit tag without its record"
    for run in trials:  # the tags count a run's exploits and name its last one
        mine = records.get(run.info.run_id, [])
        if mine:  # (two exploits from the same epoch share one record file)
            assert int(run.data.tags[schema.PBT_EXPLOITS_TAG]) >= len(mine)
            assert any(run.data.tags[schema.PBT_LAST_EXPLOIT_TAG].startswith(
                f"epoch {r['epoch']}: copied trial {r['copied_from_trial']}") for r in mine)


def test_pbt_refuses_a_mutable_hyperparameter_that_is_not_searched(tmp_path):
    """A file may fix a hyperparameter its pbt section names (only a PBT study minds)."""
    from tuner.study.config import ConfigError, StudyConfig
    from tuner.study.driver import check_strategy

    space = load_search_space("vit", "micro")
    fixed = space.model_copy(update={"train": space.train.model_copy(update={
        "search": {k: v for k, v in space.train.search.items() if k != "lr"},
        "fixed": {**space.train.fixed, "lr": 0.001}})})
    check_strategy(StudyConfig(families=["vit"]), {"vit": fixed})  # not PBT: fine
    with pytest.raises(ConfigError, match=r"--strategy pbt needs .*profiles.micro.pbt.mutable: "
                       r"\['lr'\] are not searched train hyperparameters"):
        check_strategy(StudyConfig(families=["vit"], strategy="pbt"), {"vit": fixed})


def test_a_bohb_study_cannot_be_resumed_and_says_so(micro_dataset, tmp_path):
    """Ray restores HyperBand's scheduler without its brackets (a killed BOHB study resumed
    that way waited forever here): --resume and --extend are refused before anything starts."""
    runs = tmp_path / "runs"
    for flags in (("--resume",), ("--extend", "2")):
        proc = run_study_process(run_args(micro_dataset, runs, "scratch", samples=4, extra=(
            "--strategy", "hyperband-bohb", "--study-name", "hb", *flags)), timeout_s=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert ("--strategy hyperband-bohb: a study cannot be resumed or extended (Ray does not "
                "save HyperBand's brackets)") in proc.stderr
    assert not (runs / "studies").exists() and not (runs / "mlflow.db").exists()


def test_every_family_can_run_pbt_and_pb2_in_both_profiles():
    from tuner.models import list_families

    for family in list_families():
        for profile in ("gpu", "micro"):
            space = load_search_space(family, profile)
            assert space.pbt_problem() is None and space.pb2_problem() is None, (family, profile)
            assert set(space.mutable_ranges()) == {f"train/{k}" for k in space.pbt.mutable}
