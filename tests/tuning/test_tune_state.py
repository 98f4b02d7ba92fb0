"""A study whose search state and experiment state were saved at different moments (a driver
killed between Tune's uploads) restores with exactly the trials it asked for: a real Tune
study on local storage, one of its state files then rolled back the way a torn upload leaves
it."""

from pathlib import Path

import pytest


def _trainable(config):
    from ray import tune

    for epoch in range(2):
        tune.report({"val_auc_macro": config["x"] + 0.01 * epoch})


@pytest.fixture(scope="module")
def local_ray():
    import sys

    import ray
    import ray.cloudpickle

    # Workers cannot import this test module: ship its functions by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def _fit(storage: Path, samples: int):
    from ray import tune

    from tuner.config import METRIC, MODE
    from tuner.search import make_searcher

    tuner = tune.Tuner(
        _trainable, param_space={"x": tune.uniform(0.5, 0.9)},
        tune_config=tune.TuneConfig(search_alg=make_searcher(0, 2, "tpe", samples, tell_epoch=1),
                                    num_samples=samples, metric=METRIC, mode=MODE),
        run_config=tune.RunConfig(name="torn", storage_path=str(storage), verbose=0))
    return tuner.fit()


def _roll_back_search_state(path: Path, counter: int, live: set[str]) -> None:
    import ray.cloudpickle as cloudpickle

    gen = max(path.glob("search_gen_state-*.json"))
    state = cloudpickle.loads(gen.read_bytes())
    state["counter"] = counter
    state["name:ConcurrencyLimiter"].update(live_trials=live, num_unfinished_live_trials=len(live))
    gen.write_bytes(cloudpickle.dumps(state))


def test_restore_after_a_torn_save_creates_no_extra_trial(local_ray, tmp_path):
    from tuner.search import restore_tuner
    from tuner.tune_state import reconcile_search_state

    first = _fit(tmp_path, samples=3)
    ids = sorted(r.metrics["trial_id"] for r in first)
    assert len(ids) == 3
    path = tmp_path / "torn"
    _roll_back_search_state(path, counter=2, live={ids[0]})

    changes = reconcile_search_state(str(path))
    assert len(changes) == 2 and "created 2 trials" in changes[0] and ids[0] in changes[1]
    assert reconcile_search_state(str(path)) == []  # consistent now: nothing rewritten

    restored = restore_tuner(str(path), _trainable, 1.0, 0.0).fit()
    assert sorted(r.metrics["trial_id"] for r in restored) == ids


def _drop_last_trial(path: Path) -> str:
    """Remove the newest trial from the experiment state (saved before that trial existed);
    return its id."""
    import json

    from ray.tune.experiment.trial import Trial

    experiment = max(path.glob("experiment_state-*.json"))
    state = json.loads(experiment.read_text())
    json_state, _ = state["trial_data"].pop()
    experiment.write_text(json.dumps(state))
    return Trial.from_json_state(json_state, stub=True).trial_id


def test_restore_after_a_torn_save_creates_the_missing_trial(local_ray, tmp_path):
    from tuner.search import restore_tuner
    from tuner.tune_state import reconcile_search_state

    first = _fit(tmp_path, samples=3)
    path = tmp_path / "torn"
    lost = _drop_last_trial(path)
    kept = sorted(r.metrics["trial_id"] for r in first if r.metrics["trial_id"] != lost)
    assert len(kept) == 2
    _roll_back_search_state(path, counter=3, live={lost})  # the search state knew it, running

    changes = reconcile_search_state(str(path))
    assert len(changes) == 2 and "holds 2: 1 more to create" in changes[0] and lost in changes[1]
    assert reconcile_search_state(str(path)) == []

    restored = restore_tuner(str(path), _trainable, 1.0, 0.0).fit()
    ids = [r.metrics["trial_id"] for r in restored]
    assert len(ids) == 3 and lost not in ids and set(kept) < set(ids)
    assert [r.metrics["training_iteration"] for r in restored] == [2, 2, 2]


def test_nothing_saved_nothing_changed(tmp_path):
    from tuner.tune_state import reconcile_search_state

    assert reconcile_search_state(str(tmp_path)) == []
