"""A study whose search state and experiment state were saved at different moments (a driver
killed between Tune's uploads) restores with exactly the trials it asked for: a real Tune
study on local storage, one of its state files then rolled back the way a torn upload leaves
it."""

import json
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

    from tuner.study.config import METRIC, MODE
    from tuner.study.search import make_searcher

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
    from tuner.study.search import restore_tuner
    from tuner.study.tune_state import reconcile_search_state

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
    from tuner.study.search import restore_tuner
    from tuner.study.tune_state import reconcile_search_state

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
    from tuner.study.tune_state import reconcile_search_state

    assert reconcile_search_state(str(tmp_path)) == []


def _epochs(config):
    """Six epochs, a checkpoint each (``state.json``: the epoch); the first attempt dies
    after its third."""
    import json
    import tempfile

    from ray import tune

    start = 0
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as folder:
            start = json.loads((Path(folder) / "state.json").read_text())["epoch"]
    for epoch in range(start + 1, 7):
        if epoch == 4 and start == 0:
            raise RuntimeError("driver killed")
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "state.json").write_text(json.dumps({"epoch": epoch}))
            tune.report({"epoch": epoch, "resumed_at": start, "val_auc_macro": 0.5},
                        checkpoint=tune.Checkpoint.from_directory(folder))


def fit_and_tear(storage: str) -> tuple[str, object, str]:
    """Run one ``_epochs`` trial at ``storage`` (a folder or a URI), keeping two checkpoints,
    then leave its storage as a driver killed mid-save after the 5th epoch does: the saved
    state names the 3rd epoch's checkpoint (000002), which Tune had already deleted when it
    registered the 5th; 000003 and 000004 are on storage. Returns the study path, its pyarrow
    filesystem and the trial folder on it."""
    import json

    import pyarrow.fs as pafs
    from ray import tune
    from ray.train._internal.storage import get_fs_and_path

    tune.Tuner(_epochs, run_config=tune.RunConfig(
        name="gap", storage_path=storage, verbose=0,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2))).fit()
    path = storage.rstrip("/") + "/gap"
    fs, fs_path = get_fs_and_path(path)
    (trial,) = [i.path for i in fs.get_file_info(pafs.FileSelector(fs_path))
                if i.type == pafs.FileType.Directory
                and i.path.rsplit("/", 1)[-1].startswith("_epochs_")]
    assert checkpoints(fs, trial) == ["checkpoint_000001", "checkpoint_000002"]
    for name in ("checkpoint_000001", "checkpoint_000002"):
        fs.delete_dir(f"{trial}/{name}")
    for index, epoch in ((3, 4), (4, 5)):
        fs.create_dir(f"{trial}/checkpoint_{index:06d}")
        with fs.open_output_stream(f"{trial}/checkpoint_{index:06d}/state.json") as f:
            f.write(json.dumps({"epoch": epoch}).encode())
    return path, fs, trial


def checkpoints(fs, trial: str) -> list[str]:
    import pyarrow.fs as pafs

    return sorted(name for i in fs.get_file_info(pafs.FileSelector(trial))
                  if (name := i.path.rstrip("/").rsplit("/", 1)[-1]).startswith("checkpoint_"))


def check_repointed_and_resumed(path: str, fs, trial: str) -> None:
    """The repair points the trial at 000003 (epoch 4); restored, it trains epochs 5 and 6
    into the checkpoints that follow."""
    from tuner.study.search import restore_tuner
    from tuner.study.tune_state import repoint_lost_checkpoints

    changes = repoint_lost_checkpoints(path)
    assert len(changes) == 1 and "checkpoint_000002 -> checkpoint_000003" in changes[0]
    assert repoint_lost_checkpoints(path) == []

    (result,) = restore_tuner(path, _epochs, 1.0, 0.0).fit()
    assert result.error is None
    assert (result.metrics["resumed_at"], result.metrics["epoch"]) == (4, 6)
    assert checkpoints(fs, trial) == ["checkpoint_000004", "checkpoint_000005"]
    with fs.open_input_stream(f"{trial}/checkpoint_000005/state.json") as f:
        assert b'"epoch": 6' in f.readall()


def test_trial_whose_saved_checkpoint_was_deleted_resumes_from_the_next(local_ray, tmp_path):
    """Without the repair Ray fails this trial on restore: "Could not recover from checkpoint
    as it does not exist on storage anymore"."""
    check_repointed_and_resumed(*fit_and_tear(str(tmp_path)))


def test_orphan_trial_folders_are_deleted_and_nothing_else(tmp_path):
    from tuner.study.tune_state import delete_orphan_trial_folders

    for name in ("train_trial_aaa11111", "train_trial_bbb22222", "other_ccc33333"):
        (tmp_path / name / "checkpoint_000000").mkdir(parents=True)
        (tmp_path / name / "checkpoint_000000" / "model.safetensors").write_bytes(b"w")
    (tmp_path / "experiment_state-x.json").write_text("{}")
    (tmp_path / "train_trial_ddd44444").write_text("a file, not a trial folder")

    deleted = delete_orphan_trial_folders(str(tmp_path), lambda trial_id: trial_id == "aaa11111",
                                          "train_trial")
    assert deleted == ["train_trial_bbb22222"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "experiment_state-x.json", "other_ccc33333", "train_trial_aaa11111", "train_trial_ddd44444"]
    assert delete_orphan_trial_folders(str(tmp_path), lambda trial_id: True, "train_trial") == []


def test_a_state_file_torn_by_a_full_disk_is_restored_from_its_last_good_copy(tmp_path):
    import pickle

    from tuner.study.tune_state import GOOD_SUFFIX, keep_good_copies, restore_good_copies

    state = tmp_path / "experiment_state-2026-12-06_23-00-00.json"
    state.write_text(json.dumps({"trial_data": [["{}", "{}"]] * 3, "runner_data": {}}))
    gen = tmp_path / "search_gen_state-2026-12-06_23-00-00.json"
    gen.write_bytes(pickle.dumps({"counter": 3}))  # Ray pickles it, whatever its name says
    searcher = tmp_path / "searcher-state-2026-12-06_23-00-00.pkl"
    searcher.write_bytes(pickle.dumps({"trials": [1, 2, 3]}))
    whole = {p: p.read_bytes() for p in (state, gen, searcher)}

    keep_good_copies(str(tmp_path))
    assert {p.name for p in tmp_path.glob(f"*{GOOD_SUFFIX}")} == {p.name + GOOD_SUFFIX for p in whole}
    assert restore_good_copies(str(tmp_path)) == []  # nothing torn: nothing changed

    state.write_bytes(whole[state][:40])  # torn mid-copy
    searcher.write_bytes(b"")
    keep_good_copies(str(tmp_path))  # a torn file never replaces its good copy
    changes = restore_good_copies(str(tmp_path))
    assert len(changes) == 2 and all("last good copy is restored" in c for c in changes)
    assert state.read_bytes() == whole[state] and searcher.read_bytes() == whole[searcher]

    (tmp_path / (gen.name + GOOD_SUFFIX)).unlink()
    gen.write_text('{"coun')
    assert restore_good_copies(str(tmp_path)) == [f"{gen.name} is torn and has no good copy"]
