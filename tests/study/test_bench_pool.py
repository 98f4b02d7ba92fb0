"""The search-efficiency benchmark's summary, recomputed from saved per-trial curves
(``bench/search_efficiency.py --pool``), which the results file's verdict rests on: what each
study would promote, scored on the test split, paired against random search per seed."""

import gzip
import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "search_efficiency.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("search_efficiency", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trial(val, test):
    return {"config": {}, "epochs": list(range(1, len(val) + 1)), "val_auc": val,
            "test_auc": test}


def _study(method, seed, *trials):
    return {"method": method, "seed": seed, "max_epochs": 4, "curves": list(trials)}


def test_pool_scores_what_each_study_would_promote_on_the_test_split(bench, tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json.gz"
    first.write_text(json.dumps([
        # promoted: the completed trial with the best val AUC (0.9, at epoch 3: test 0.85);
        # the stopped trial's higher val AUC does not count
        _study("asha-tpe", 0, _trial([0.6, 0.7, 0.9, 0.8], [0.5, 0.6, 0.85, 0.9]),
               _trial([0.95], [0.99])),
        _study("random", 0, _trial([0.7, 0.8, 0.91, 0.92], [0.6, 0.7, 0.8, 0.88]),
               _trial([0.5] * 4, [0.5] * 4))]))
    with gzip.open(second, "wt") as f:
        json.dump([
            # a tie: the first best epoch (test 0.7)
            _study("asha-tpe", 1, _trial([0.8] * 4, [0.7, 0.9, 0.9, 0.9]), _trial([0.4], [0.4])),
            _study("random", 1, _trial([0.85] * 4, [0.8] * 4), _trial([0.5] * 4, [0.5] * 4))], f)
    assert bench.main(["--pool", str(first), str(second), "--out", str(tmp_path / "o.md")]) == 0
    table = (tmp_path / "o.md").read_text()
    # test AUC differences -0.03 and -0.10: mean -0.065, 95% t interval (1 degree of freedom)
    # -0.065 +- 12.706 * 0.0495 / sqrt(2); 5 epochs each against 8; random cut to its first
    # trial (round(5 / 4)) scores the same here
    assert ("| asha-tpe | 2 | 0.7750 | 0.8500 | 5.0 | 0.625 | -0.0650 [-0.5097, +0.3797] | "
            "-0.0650 [-0.5097, +0.3797] | 1.0 |") in table
    assert "| random | 2 | 0.8400 | 0.8850 | 8.0 | 1 | | | |" in table
    assert "Measured over 2 seeds: -0.0650 (95% interval -0.5097 to +0.3797) at 0.625" in table
    assert "| asha-tpe | 0 | 2 | 5 | 0.9000 | 0.8500 |" in table


def test_pool_refuses_a_seed_twice_or_without_random_search(bench, tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([_study("asha-tpe", 0, _trial([0.7] * 4, [0.7] * 4)),
                                _study("random", 0, _trial([0.7] * 4, [0.7] * 4))]))
    with pytest.raises(SystemExit, match="asha-tpe seed 0 is in more than one file"):
        bench.main(["--pool", str(path), str(path)])
    path.write_text(json.dumps([_study("asha-tpe", 3, _trial([0.7] * 4, [0.7] * 4))]))
    with pytest.raises(SystemExit, match="no random runs: nothing to compare with"):
        bench.main(["--pool", str(path)])


def test_pool_says_which_hyperparameters_the_first_rung_rewards_and_which_the_end(bench, tmp_path):
    # lr decides the best val AUC; batch size the score after 1 epoch (fewer images per step,
    # more steps); the fixed key and the non-numeric one are left out
    def trial(lr, batch, seed):
        val = [0.5 + 0.1 * (32 - batch) / 16 + 0.001 * seed, 0.6 + lr, 0.7 + lr, 0.75 + lr]
        return {"config": {"train": {"lr": lr, "batch_size": batch, "fixed": 3, "opt": "adamw"},
                           "model": {}},
                "epochs": [1, 2, 3, 4], "val_auc": val, "test_auc": val}
    runs = [_study("random", seed, trial(0.01, 32, seed), trial(0.02, 16, seed),
                   trial(0.03, 32, seed), trial(0.04, 16, seed)) for seed in (0, 1)]
    path = tmp_path / "h.json"
    path.write_text(json.dumps(runs))
    assert bench.main(["--pool", str(path), "--out", str(tmp_path / "o.md")]) == 0
    table = (tmp_path / "o.md").read_text()
    assert "mean of 2 seeds" in table
    assert "| hyperparameter | vs val AUC after 1 epoch | vs best val AUC |" in table
    assert "| train.lr | +0.45 | +1.00 |" in table
    assert "| train.batch_size | -1.00 | -0.45 |" in table
    assert "train.fixed" not in table and "train.opt" not in table


def test_asha_replayed_on_recorded_curves_stops_and_promotes_as_the_rank_rule_does(bench):
    # max 4 epochs, grace 1, rf 2: rungs at 1 and 2.
    trials = [_trial([0.5, 0.6, 0.7, 0.8], [0.5, 0.6, 0.7, 0.75]),  # first at each rung: on
              _trial([0.6, 0.5, 0.9, 0.9], [0.9] * 4),  # on at 1 (best of 2), below 0.6 at 2
              _trial([0.4, 0.9, 0.9, 0.9], [0.9] * 4),  # 3rd at rung 1: must be the best; stops
              _trial([0.9, 0.95, 0.97, 0.96], [0.8, 0.85, 0.88, 0.9])]  # top 2 of 4, best of 3
    replay = bench.replay_asha(trials, 4, 1, 2)
    assert replay == {"val_auc": 0.97, "test_auc": 0.88, "epochs": 4 + 2 + 1 + 4}
    # With rf 4 the one rung is at 1 epoch: the 2nd trial beats the 1st there and completes,
    # the 3rd is not the best of 3 and stops, the 4th is the best of 4.
    assert bench.replay_asha(trials, 4, 1, 4)["epochs"] == 4 + 4 + 1 + 4
    entries = [_study("random", seed, *trials) for seed in (0, 1)]
    table = bench.replayed_asha_table(entries, schedules=((1, 2), (4, 2)), orders=1)
    # in the recorded order random search promotes the same trial: no difference; 11 of 16
    # epochs. A grace period at the budget has no rung: left out.
    assert "| 1 | 2 | 1, 2 | 0.688 | +0.0000 [+0.0000, +0.0000] |" in table
    assert "| 4 | 2 |" not in table
    # Other orders spend otherwise (the best trial first: 4 + 1 + 1 + 2 epochs, the fewest;
    # every trial through: 16): the mean over orders moves off the recorded order's 11.
    many = bench.replayed_asha_table(entries, schedules=((1, 2),), orders=50)
    epochs = float(many.split("| 1 | 2 | 1, 2 | ")[1].split(" |")[0]) * 16
    assert 8 <= epochs <= 16 and abs(epochs - 11) > 0.1


def test_the_weights_moving_average_is_summarised_where_the_curves_carry_it(bench):
    def averaged(val, test, val_ema, test_ema):
        return {**_trial(val, test), "val_ema": val_ema, "test_ema": test_ema}

    # Judging the average, the 2nd trial is the better one from its first epoch on.
    trials = [averaged([0.7, 0.6, 0.8, 0.9], [0.7] * 4, [0.6, 0.6, 0.7, 0.8], [0.75] * 4),
              averaged([0.6, 0.7, 0.7, 0.8], [0.8] * 4, [0.7, 0.8, 0.9, 0.95], [0.9] * 4)]
    entries = [_study("random", seed, *trials) for seed in (0, 1)]
    text = bench.averaged_weights_section(entries)
    # the average's promotion (test 0.9) against the weights' (0.7)
    assert "random search promotes a model +0.2000 [+0.2000, +0.2000]" in text
    assert "after 1 epoch: +1.00, +1.00" in text and "after 2 epochs: +1.00, +1.00" in text
    assert bench.averaged_weights_section([_study("random", 0, _trial([0.5] * 4, [0.5] * 4))]) == ""


def test_where_the_searcher_looked_in_the_hyperparameter_the_end_rewards(bench):
    def trial(lr, wd, best, epochs=4):
        val = [0.5, 0.6, 0.7, best][:epochs]
        return {"config": {"train": {"lr": lr, "weight_decay": wd}, "model": {}},
                "epochs": list(range(1, epochs + 1)), "val_auc": val, "test_auc": val}

    # lr ranks random search's best val AUC (Spearman 1); weight decay does not. Random's best
    # quarter (1 of 4 trials) has lr 0.04; asha-tpe starts with 2 random trials
    # (tpe_startup_trials(4)), then chooses lr 0.04 and 0.01, and promotes lr 0.02 (the 0.04
    # trial stopped at 2 epochs).
    random = _study("random", 0, trial(0.01, 0.3, 0.80), trial(0.02, 0.1, 0.85),
                    trial(0.03, 0.4, 0.90), trial(0.04, 0.2, 0.95))
    asha = _study("asha-tpe", 0, trial(0.03, 0.1, 0.80, epochs=1), trial(0.02, 0.1, 0.90),
                  trial(0.04, 0.1, 0.99, epochs=2), trial(0.01, 0.1, 0.70))
    text = bench.where_searched([random, asha])
    assert "in train.lr (" in text and "Spearman +1.00" in text
    assert "| 0 | -0.0500 | 0.04 | 0.02 | 0.025 | 1 of 2 |" in text
    assert bench.where_searched([random]) == ""
