"""The rank-rule ASHA scheduler: cutoffs, decisions against Ray's own rule, pickling."""

import pickle
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tuner.study.asha import RankASHAScheduler, rank_cutoff


def test_rank_cutoff_keeps_the_best_k_over_rf():
    assert rank_cutoff([], 4) is None
    assert rank_cutoff([0.5], 4) == 0.5                       # k=2: only the best goes on
    assert rank_cutoff([0.5, 0.7], 4) == 0.7                  # k=3: still one
    assert rank_cutoff([0.1, 0.9, 0.3, 0.8, 0.2, 0.5, 0.4], 4) == 0.8  # k=8: the best two
    assert rank_cutoff([0.1, 0.9, 0.3], 2) == 0.3             # k=4, rf 2: the best two of four
    assert rank_cutoff([0.1, float("nan"), 0.3], 2) == 0.3


def _decisions(scheduler, scores, iteration=1):
    scheduler.set_search_properties("val_auc_macro", "max")
    out = []
    for i, score in enumerate(scores):
        trial = SimpleNamespace(trial_id=f"t{i}")
        scheduler.on_trial_add(None, trial)
        out.append(scheduler.on_trial_result(
            None, trial, {"training_iteration": iteration, "val_auc_macro": score}))
    return out


def test_stricter_than_rays_percentile_at_the_start():
    scores = [0.60, 0.70, 0.68, 0.65, 0.72]
    ray_rule = _decisions(ASHAScheduler(max_t=16, grace_period=1, reduction_factor=4), scores)
    rank_rule = _decisions(RankASHAScheduler(max_t=16, grace_period=1, reduction_factor=4), scores)
    go, stop = TrialScheduler.CONTINUE, TrialScheduler.STOP
    # Ray: the third (0.68) is above 0.60 + 0.75 * (0.70 - 0.60) and goes on.
    assert ray_rule == [go, go, go, stop, go]
    # Rank: the third is not the best of three, so it stops.
    assert rank_rule == [go, go, stop, stop, go]


def test_max_t_still_ends_a_trial_and_state_pickles():
    scheduler = RankASHAScheduler(max_t=4, grace_period=1, reduction_factor=2)
    assert _decisions(scheduler, [0.5], iteration=4) == [TrialScheduler.STOP]
    clone = pickle.loads(pickle.dumps(scheduler))  # Tune saves the scheduler with the study
    assert _decisions(clone, [0.4], iteration=1) == [TrialScheduler.CONTINUE]
    assert [m for m, _ in clone._brackets[0]._rungs] == [4, 2, 1]


@pytest.mark.parametrize("rf", [2, 3, 4])
def test_long_run_pass_rate_is_one_over_rf(rf):
    import random

    rng = random.Random(rf)
    decisions = _decisions(RankASHAScheduler(max_t=64, grace_period=1, reduction_factor=rf),
                           [rng.random() for _ in range(2000)])
    rate = decisions.count(TrialScheduler.CONTINUE) / len(decisions)
    assert abs(rate - 1 / rf) < 0.03


def test_make_scheduler_picks_the_rule():
    from tuner.study.search import make_scheduler

    assert type(make_scheduler(16, 1, 4)) is RankASHAScheduler
    assert type(make_scheduler(16, 1, 4, asha_rule="percentile")) is ASHAScheduler
    with pytest.raises(ValueError, match="allowed: rank, percentile"):
        make_scheduler(16, 1, 4, asha_rule="median")


def test_equal_fidelity_search_tells_optuna_the_first_rung_score():
    import optuna
    from ray import tune

    from tuner.study.asha import EqualFidelityOptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search = EqualFidelityOptunaSearch(
        space={"lr": tune.loguniform(1e-4, 1e-2)}, metric="val_auc_macro", mode="max",
        sampler=optuna.samplers.RandomSampler(seed=0), at_epoch=1)
    for trial_id, curve in (("full", [0.6, 0.8, 0.9]), ("stopped", [0.7]), ("short", [])):
        assert search.suggest(trial_id) is not None
        for epoch, score in enumerate(curve, start=1):
            search.on_trial_result(trial_id, {"training_iteration": epoch, "val_auc_macro": score})
        last = {"training_iteration": len(curve), "val_auc_macro": curve[-1] if curve else 0.5}
        search.on_trial_complete(trial_id, last)
    values = [t.value for t in search._ot_study.trials]
    # the full trial is told its epoch-1 score, not 0.9; one that never reached epoch 1 its last
    assert values == [0.6, 0.7, 0.5]


def test_make_searcher_tell_epoch_switch():
    from ray.tune.search.optuna import OptunaSearch

    from tuner.study.asha import EqualFidelityOptunaSearch, RestorableOptunaSearch
    from tuner.study.search import make_searcher

    assert type(make_searcher(0, 2, "tpe", 12).searcher) is RestorableOptunaSearch
    assert issubclass(RestorableOptunaSearch, OptunaSearch)
    assert type(make_searcher(0, 2, "tpe", 12, tell_epoch=1).searcher) is EqualFidelityOptunaSearch


def test_equal_fidelity_search_keeps_first_rung_scores_across_save_and_restore(tmp_path):
    """A study restored after its driver died still tells TPE the first-rung score of a trial
    that reached the rung before the crash and completes after it."""
    import optuna
    from ray import tune

    from tuner.study.asha import EqualFidelityOptunaSearch

    def fresh():
        return EqualFidelityOptunaSearch(
            space={"lr": tune.loguniform(1e-4, 1e-2)}, metric="val_auc_macro", mode="max",
            sampler=optuna.samplers.RandomSampler(seed=0), at_epoch=2)

    search = fresh()
    assert search.suggest("t1") is not None
    for epoch, score in ((1, 0.55), (2, 0.65), (3, 0.7)):
        search.on_trial_result("t1", {"training_iteration": epoch, "val_auc_macro": score})
    search.save(str(tmp_path / "searcher.pkl"))
    restored = fresh()
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_result("t1", {"training_iteration": 4, "val_auc_macro": 0.9})
    restored.on_trial_complete("t1", {"training_iteration": 4, "val_auc_macro": 0.9})
    assert [t.value for t in restored._ot_study.trials] == [0.65]


def test_rungs_count_the_trials_own_epochs_not_rays_iterations():
    """After a restore Ray's training_iteration can restart below the epochs a trial has
    trained; ASHA and the stop reason count the epoch the trial reports."""
    from tuner.study.search import make_scheduler

    scheduler = make_scheduler(16, 1, 4)
    scheduler.set_search_properties("val_auc_macro", "max")
    trial = SimpleNamespace(trial_id="t0")
    scheduler.on_trial_add(None, trial)
    # epoch 16 of 16 reported as Ray's first iteration since restore: the trial is done
    result = {"training_iteration": 1, "epoch": 16.0, "val_auc_macro": 0.9}
    assert scheduler.on_trial_result(None, trial, result) == TrialScheduler.STOP


@pytest.mark.parametrize("at_epoch", [None, 1])
def test_results_of_a_trial_optuna_never_suggested_are_left_out(at_epoch):
    """Restored from an experiment state newer than the searcher's: Ray's OptunaSearch would
    raise KeyError and end the study."""
    import optuna
    from ray import tune

    from tuner.study.asha import EqualFidelityOptunaSearch, RestorableOptunaSearch

    kwargs = dict(space={"lr": tune.loguniform(1e-4, 1e-2)}, metric="val_auc_macro", mode="max",
                  sampler=optuna.samplers.RandomSampler(seed=0))
    search = (RestorableOptunaSearch(**kwargs) if at_epoch is None
              else EqualFidelityOptunaSearch(**kwargs, at_epoch=at_epoch))
    assert search.suggest("known") is not None
    for trial_id in ("stranger", "known"):
        search.on_trial_result(trial_id, {"training_iteration": 1, "val_auc_macro": 0.8})
        search.on_trial_complete(trial_id, {"training_iteration": 1, "val_auc_macro": 0.8})
    assert [t.value for t in search._ot_study.trials] == [0.8]


@pytest.mark.parametrize("max_t,grace,rf", [(50, 5, 3), (3, 1, 2), (40, 4, 3), (16, 1, 4),
                                            (10, 10, 3), (12, 2, 2), (100, 1, 3)])
def test_rung_epochs_are_the_rungs_of_rays_bracket_below_the_last_epoch(max_t, grace, rf):
    from tuner.study.strategies import rung_epochs

    scheduler = RankASHAScheduler(time_attr="epoch", max_t=max_t, grace_period=grace,
                                  reduction_factor=rf)
    rays = sorted(int(r[0]) for r in scheduler._brackets[0]._rungs if r[0] < max_t)
    assert rung_epochs(max_t, grace, rf) == rays
