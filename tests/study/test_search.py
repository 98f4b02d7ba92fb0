import math

from ray import tune

from tuner.study.search import (
    make_scheduler,
    make_searcher,
    optuna_importances,
    tpe_startup_trials,
    trial_resources,
)

SPACE = {"model": {"depth": tune.randint(2, 6), "width": 8},
         "train": {"lr": tune.loguniform(1e-4, 1e-2)}}


def test_importances_rank_the_parameter_that_drives_the_score():
    trials = []
    for i in range(12):
        lr = 1e-4 * (1.5 ** i)
        depth = 2 + i % 4
        trials.append(({"model": {"depth": depth, "width": 8}, "train": {"lr": lr}}, math.log(lr)))
    importances = optuna_importances(SPACE, trials)
    assert set(importances) == {"model.depth", "train.lr"}
    assert importances["train.lr"] > importances["model.depth"]


def test_importances_need_two_scored_trials():
    assert optuna_importances(SPACE, [({"model": {"depth": 2}, "train": {"lr": 1e-3}}, 0.5)]) == {}


def test_scheduler_and_searcher_settings():
    asha = make_scheduler(max_epochs=9, grace_period=20, reduction_factor=3)
    assert asha._max_t == 9
    assert [b._rungs[-1][0] for b in asha._brackets] == [9]  # grace never exceeds the budget
    limiter = make_searcher(seed=1, max_concurrent=3)
    assert limiter.max_concurrent == 3
    assert trial_resources(2, 0) == {"cpu": 2}
    assert trial_resources(1, 0.25) == {"cpu": 1, "gpu": 0.25}


def test_tpe_models_after_a_third_of_a_small_study():
    assert [tpe_startup_trials(n) for n in (4, 12, 30, 100)] == [2, 4, 10, 10]
    assert tpe_startup_trials(None) == 10
    sampler = make_searcher(seed=0, max_concurrent=2, num_samples=12).searcher._sampler
    assert sampler._n_startup_trials == 4
