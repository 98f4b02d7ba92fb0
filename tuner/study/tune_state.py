"""Agreement between the files Ray Tune saves for an interrupted study, checked before restore.

Tune keeps a study's state in separate files under its storage path: the experiment state
(``experiment_state-<session>.json``: every trial and its status), the search generator's
state (``search_gen_state-<session>.json``: how many trials the searcher has created, and the
concurrency limiter's live trials) and the searcher's own (``searcher-state-<session>.pkl``:
Optuna). It writes them together but uploads them one file at a time, so a driver killed
during an upload (seen with ``s3://`` storage) can leave an experiment state newer than the
search state, or the other way round. Restored as it is, a generator count that lags the
trials makes Tune create more trials than ``--samples`` asked for; a count ahead of them (a
trial created after the last experiment state was uploaded) makes it create fewer, and the
concurrency limiter keeps slots for trials that ended, or that the restored study will never
see. :func:`reconcile_search_state` makes the search state agree with the experiment state's
trials before ``Tuner.restore`` reads them, and :func:`repoint_lost_checkpoints` points a
trial whose saved latest checkpoint was deleted before the kill at the one that replaced it.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from collections.abc import Callable
from pathlib import PurePosixPath

log = logging.getLogger(__name__)

SEARCH_GEN_PATTERN = "search_gen_state-*.json"
LIMITER_KEY = "name:ConcurrencyLimiter"


def _newest(fs, fs_path: str, pattern: str) -> str | None:
    import pyarrow.fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(fs_path, allow_not_found=True))
    names = fnmatch.filter([PurePosixPath(i.path).name for i in infos], pattern)
    # Tune's own choice: the greatest name (session strings are timestamps).
    return str(PurePosixPath(fs_path, max(names))) if names else None


def saved_trials(fs, experiment_state_path: str) -> dict[str, str]:
    """Trial id -> status of every trial in an experiment state file."""
    from ray.tune.experiment.trial import Trial
    from ray.tune.utils.serialization import _loads_with_cloudpickle

    with fs.open_input_stream(experiment_state_path) as f:
        state = _loads_with_cloudpickle(f.readall())
    trials = (Trial.from_json_state(js, stub=True) for js, _ in state["trial_data"])
    return {t.trial_id: t.status for t in trials}


def _newest_experiment_state(path: str) -> tuple[object, str, str | None]:
    """(pyarrow filesystem, path on it, newest experiment state file or None) of ``path``."""
    from ray.train._internal.storage import get_fs_and_path
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint

    fs, fs_path = get_fs_and_path(path)
    return fs, fs_path, _find_newest_experiment_checkpoint(fs_path, fs=fs)


def _search_state(path: str) -> tuple[object, str | None, str | None, dict | None]:
    """(filesystem, newest experiment state file, newest search generator state file, that
    state unpickled) at ``path``; None for what is not there."""
    import ray.cloudpickle as cloudpickle

    fs, fs_path, experiment_path = _newest_experiment_state(path)
    gen_path = _newest(fs, fs_path, SEARCH_GEN_PATTERN)
    if gen_path is None:
        return fs, experiment_path, None, None
    with fs.open_input_stream(gen_path) as f:
        return fs, experiment_path, gen_path, cloudpickle.loads(f.readall())


def _write_search_state(fs, gen_path: str, state: dict) -> None:
    import ray.cloudpickle as cloudpickle

    payload = cloudpickle.dumps(state)
    with fs.open_output_stream(gen_path) as f:
        f.write(payload)


def reconcile_search_state(path: str, finished_trials: set[str] = frozenset()) -> list[str]:
    """Make the newest search generator state at ``path`` (a local folder or a URI Ray can
    open) agree with the newest experiment state: its trial count equal to the number of
    trials that state holds, no limiter slot held by a trial that has ended or that it does not
    hold. Trials in ``finished_trials`` (ended, by their MLflow runs) that the experiment state
    lost count as created, so the restored study does not sample replacements for them.
    Rewrites the file only when something changes; returns what changed, one line each
    (empty: already consistent or nothing saved)."""
    fs, experiment_path, gen_path, state = _search_state(path)
    if experiment_path is None or gen_path is None:
        return []
    trials = saved_trials(fs, experiment_path)
    changes = []
    lost = set(finished_trials) - set(trials)
    if lost:
        changes.append(f"trials {sorted(lost)} finished but the experiment state lost them: "
                       "they count toward the samples")
    created, saved = state["counter"], len(trials) + len(lost)
    if created != saved:
        # Fewer created: no further trial for those that exist. More created: trials made
        # after the experiment state was saved, which the restored study never runs, so it
        # must create as many again to reach --samples.
        changes.append(f"search state had created {created} trials, the experiment state "
                       f"holds {saved}: " + ("no further trial for those" if created < saved
                                             else f"{created - saved} more to create"))
        state["counter"] = saved
    limiter = state.get(LIMITER_KEY)
    if limiter is not None:
        ended = {t for t in limiter["live_trials"] if trials.get(t) == "TERMINATED"}
        unsaved = {t for t in limiter["live_trials"] if t not in trials}
        if ended:
            changes.append(f"concurrency slots freed of ended trials {sorted(ended)}")
        if unsaved:
            changes.append(f"concurrency slots freed of trials the experiment state does not "
                           f"hold {sorted(unsaved)}")
        if ended or unsaved:
            limiter["live_trials"] = set(limiter["live_trials"]) - ended - unsaved
            limiter["num_unfinished_live_trials"] = max(
                0, limiter["num_unfinished_live_trials"] - len(ended | unsaved))
    if changes:
        _write_search_state(fs, gen_path, state)
        for line in changes:
            log.warning("restore of %s: %s", path, line)
    return changes


# The files Tune restores a study from, and how each is checked whole. Tune writes them in a
# staging folder and copies them to the storage one by one, not atomically: a disk that fills
# up during a copy leaves a torn file, which no restore can read.
STATE_PATTERNS = {"experiment_state-*.json": "json", SEARCH_GEN_PATTERN: "pickle",
                  "searcher-state-*.pkl": "pickle"}
GOOD_SUFFIX = ".lenstune-good"  # the last copy of a state file that read whole


def _whole(payload: bytes, kind: str) -> bool:
    import ray.cloudpickle as cloudpickle

    try:
        if kind == "json":
            json.loads(payload)
        else:
            cloudpickle.loads(payload)
        return bool(payload)
    except Exception:  # noqa: BLE001 - torn or empty: not whole
        return False


def _state_files(fs, fs_path: str) -> list[tuple[str, str]]:
    """(path, kind) of the newest file of each state pattern at ``fs_path``."""
    return [(newest, kind) for pattern, kind in STATE_PATTERNS.items()
            if (newest := _newest(fs, fs_path, pattern)) is not None]


def keep_good_copies(path: str) -> None:
    """Copy each of the study's newest state files at ``path`` that reads whole to
    ``<name>.lenstune-good`` beside it (when it changed since the last copy), for
    :func:`restore_good_copies`. Best effort: a full disk fails the copy, never the study."""
    from ray.train._internal.storage import get_fs_and_path

    try:
        fs, fs_path = get_fs_and_path(path)
        for state, kind in _state_files(fs, fs_path):
            good = state + GOOD_SUFFIX
            seen, kept = fs.get_file_info([state, good])
            if kept.type.name == "File" and kept.mtime is not None and seen.mtime is not None \
                    and kept.mtime >= seen.mtime and kept.size == seen.size:
                continue  # unchanged since its copy
            with fs.open_input_stream(state) as f:
                payload = f.readall()
            if _whole(payload, kind):
                tmp = good + ".tmp"
                with fs.open_output_stream(tmp) as f:
                    f.write(payload)
                fs.move(tmp, good)
    except Exception as exc:  # noqa: BLE001 - a copy for later; the study goes on
        log.debug("no good copy of the state at %s: %s", path, exc)


def restore_good_copies(path: str) -> list[str]:
    """Put back the last good copy of every newest state file at ``path`` that does not read
    whole (torn by a disk that filled up while Tune copied it); returns what changed, one line
    each. The copy may be older than the torn file: the restore then sees a state that lags
    behind MLflow, which ``--resume`` already reconciles (finished trials are replayed from
    MLflow, trials it never saved are replaced)."""
    from ray.train._internal.storage import get_fs_and_path

    fs, fs_path = get_fs_and_path(path)
    changes = []
    for state, kind in _state_files(fs, fs_path):
        with fs.open_input_stream(state) as f:
            if _whole(f.readall(), kind):
                continue
        good = state + GOOD_SUFFIX
        if fs.get_file_info(good).type.name != "File":
            changes.append(f"{PurePosixPath(state).name} is torn and has no good copy")
            continue
        fs.copy_file(good, state)
        changes.append(f"{PurePosixPath(state).name} was torn (a full disk?): its last good "
                       "copy is restored")
    for line in changes:
        log.warning("restore of %s: %s", path, line)
    return changes


def _folders(fs, fs_path: str) -> list[tuple[str, str]]:
    """(name, path) of every folder directly under ``fs_path``; none where it does not exist."""
    import pyarrow.fs as pafs

    return [(PurePosixPath(info.path).name, info.path)
            for info in fs.get_file_info(pafs.FileSelector(fs_path, allow_not_found=True))
            if info.type == pafs.FileType.Directory]


def _checkpoint_index(path: str) -> int | None:
    from tuner.training.checkpoint import checkpoint_index

    return checkpoint_index(PurePosixPath(path.rstrip("/")).name)


def trial_checkpoint_paths(fs, trial_path: str) -> list[tuple[int, str]]:
    """(N, path) of the ``checkpoint_<N>`` folders of a trial on storage ``fs``, oldest first."""
    return sorted((index, path) for name, path in _folders(fs, trial_path)
                  if (index := _checkpoint_index(name)) is not None)


def _repoint(run_json: str, trial_state: dict) -> tuple[str, dict, str] | None:
    """For one unfinished trial whose latest checkpoint is gone from storage: its runtime
    metadata and state pointing at the oldest newer checkpoint that exists, and what changed."""
    import ray.cloudpickle as cloudpickle
    from ray._common.utils import binary_to_hex, hex_to_binary
    from ray.train import Checkpoint
    from ray.train._internal.session import _TrainingResult
    from ray.train._internal.storage import _exists_at_fs_path
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    run = _TrainingRunMetadata.from_json_state(run_json)
    manager = run.checkpoint_manager
    latest = manager.latest_checkpoint_result if manager is not None else None
    if latest is None:
        return None
    fs, lost = latest.checkpoint.filesystem, latest.checkpoint.path
    lost_index = _checkpoint_index(lost)
    if lost_index is None or _exists_at_fs_path(fs, lost):
        return None
    # The oldest newer one: Tune deletes a checkpoint only after registering the two that
    # follow it, so that one is complete; a newer one may be a half-finished upload.
    siblings = trial_checkpoint_paths(fs, str(PurePosixPath(lost).parent))
    oldest_newer = min(((index, path) for index, path in siblings if index > lost_index),
                       default=None)
    if oldest_newer is None:
        return None
    index, path = oldest_newer
    metrics = dict(latest.metrics)
    if "training_iteration" in metrics:
        metrics["training_iteration"] += index - lost_index
    metrics["checkpoint_dir_name"] = PurePosixPath(path).name
    result = _TrainingResult(checkpoint=Checkpoint(path=path, filesystem=fs), metrics=metrics)
    manager._checkpoint_results = [r for r in manager._checkpoint_results
                                   if _exists_at_fs_path(fs, r.checkpoint.path)] + [result]
    manager._latest_checkpoint_result = result
    run.checkpoint_manager = manager  # invalidates the cached JSON
    # The next checkpoint the trial writes follows the one it resumes from.
    storage = cloudpickle.loads(hex_to_binary(trial_state["storage"]["value"]))
    storage.current_checkpoint_index = index
    trial_state = {**trial_state,
                   "storage": {**trial_state["storage"],
                               "value": binary_to_hex(cloudpickle.dumps(storage))}}
    line = f"{PurePosixPath(lost).name} -> {PurePosixPath(path).name}"
    return run.get_json_state(), trial_state, line


def repoint_lost_checkpoints(path: str) -> list[str]:
    """Point every unfinished trial of the newest experiment state at ``path`` whose latest
    checkpoint no longer exists at the oldest newer checkpoint that does; returns what
    changed, one line per trial (empty: nothing to do).

    Tune keeps each trial's two latest checkpoints and deletes older ones as new ones are
    registered, and it saves the experiment state naming them at most every couple of
    checkpoints. When epochs are short, a driver killed while that state is being written
    leaves it naming a checkpoint already deleted, and Tune would fail the trial on restore
    ("does not exist on storage anymore"). The trial resumes instead from the checkpoint
    that came next, which was written before the kill."""
    fs, _, experiment_path = _newest_experiment_state(path)
    if experiment_path is None:
        return []
    with fs.open_input_stream(experiment_path) as f:
        state = json.loads(f.readall())
    changes = []
    for entry in state["trial_data"]:
        trial_state = json.loads(entry[0])
        if trial_state.get("status") == "TERMINATED" or "storage" not in trial_state:
            continue
        try:
            repaired = _repoint(entry[1], trial_state)
        except Exception as exc:  # left as saved: Tune restores it, or fails it, as before
            log.warning("restore of %s: could not check the checkpoint of trial %s: %s", path,
                        trial_state.get("trial_id"), exc)
            continue
        if repaired is not None:
            entry[1], new_state, line = repaired
            entry[0] = json.dumps(new_state, indent=2)
            changes.append(f"trial {trial_state.get('trial_id')}: saved checkpoint gone, "
                           f"resuming from the next one ({line})")
    if changes:
        payload = json.dumps(state).encode()
        with fs.open_output_stream(experiment_path) as f:
            f.write(payload)
        for line in changes:
            log.warning("restore of %s: %s", path, line)
    return changes


def delete_orphan_trial_folders(path: str, known: Callable[[str], bool],
                                trainable_name: str) -> list[str]:
    """Delete the trial folders (``<trainable_name>_<trial id>``) under the study at ``path``
    whose trial is not ``known`` to the restored study; return their names.

    A trial started just before the driver was killed, and never recorded in the saved
    experiment state, may have written checkpoints; the restored study does not know it and
    sampled another in its place, so its folder is only clutter (and storage cost)."""
    from ray.train._internal.storage import get_fs_and_path

    fs, fs_path = get_fs_and_path(path)
    prefix = trainable_name + "_"
    orphans = []
    for name, folder in _folders(fs, fs_path):
        if name.startswith(prefix) and not known(name[len(prefix):]):
            fs.delete_dir(folder)
            orphans.append(name)
    for name in orphans:
        log.warning("restore of %s: deleted %s, a trial the saved state never recorded", path,
                    name)
    return orphans


def extend_search_state(path: str, more: int) -> int:
    """Let the restored search generator at ``path`` create ``more`` trials than it was asked
    for (``--extend``): its sample budget raised, its finished mark cleared. Returns the new
    budget; ValueError when nothing was saved there."""
    fs, _, gen_path, state = _search_state(path)
    if gen_path is None:
        raise ValueError(f"no search state under {path}")
    state["total_samples"] = int(state["total_samples"]) + more
    state["finished"] = False
    _write_search_state(fs, gen_path, state)
    return state["total_samples"]
