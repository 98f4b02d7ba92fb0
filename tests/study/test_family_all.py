"""``--family all``: every registered family is tuned in one study (one trial of one epoch each,
32 px), on local Ray with embedded MLflow, and lands on the leaderboard."""

import csv
import time

import pytest

from tests.study.studies import check_trial_runs, run_args, run_study_process, trial_runs
from tuner.models import list_families

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """32 px Model II, 20 train images per class: the smallest store every family trains on."""
    from tuner.data import ensure_simulated

    return ensure_simulated(tmp_path_factory.mktemp("all-data") / "tiny", "model_ii", 20, seed=0,
                            img_size=32)


@pytest.mark.timeout(600)
def test_family_all_tunes_every_family(tiny_dataset, tmp_path):
    families = list(list_families())
    assert len(families) >= 17
    runs = tmp_path / "runs"
    started = time.monotonic()
    proc = run_study_process(run_args(tiny_dataset, runs, "all", samples=1,
                                      extra=("--max-epochs", "1", "--no-promote")), timeout_s=540)
    wall_s = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"--family all over {len(families)} families: {wall_s:.0f} s")

    uri = f"sqlite:///{runs / 'mlflow.db'}"
    studies, trials = trial_runs(uri)
    assert len(studies) == 1 and studies[0].info.status == "FINISHED"
    parent = studies[0]
    assert parent.data.tags["lenstune.study"].startswith("all-")  # not 17 names joined
    assert parent.data.tags["lenstune.families"] == ",".join(families)
    assert sorted(r.data.tags["family"] for r in trials) == sorted(families)  # one trial each
    # Nested under the study run, one epoch of metrics, stop_reason "completed" (1 of 1 epochs).
    check_trial_runs(uri, trials, parent.info.run_id, 1)
    assert all(parent.data.tags.get(f"lenstune.done.{f}") == "true" for f in families)

    board = next((runs / "leaderboards").glob("*/leaderboard.csv"))
    rows = list(csv.DictReader(board.open()))
    assert sorted(r["family"] for r in rows) == sorted(families)
    assert all(0.0 <= float(r["best_val_auc_macro"]) <= 1.0 for r in rows)
    assert {r["run_id"] for r in rows} == {r.info.run_id for r in trials}
