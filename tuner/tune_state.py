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
trials before ``Tuner.restore`` reads them.
"""

from __future__ import annotations

import fnmatch
import logging
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


def reconcile_search_state(path: str) -> list[str]:
    """Make the newest search generator state at ``path`` (a local folder or a URI Ray can
    open) agree with the newest experiment state: its trial count equal to the number of
    trials that state holds, no limiter slot held by a trial that has ended or that it does not
    hold. Rewrites the file only when something changes; returns what changed, one line each
    (empty: already consistent or nothing saved)."""
    import ray.cloudpickle as cloudpickle
    from ray.train._internal.storage import get_fs_and_path
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint

    fs, fs_path = get_fs_and_path(path)
    experiment_path = _find_newest_experiment_checkpoint(fs_path, fs=fs)
    gen_path = _newest(fs, fs_path, SEARCH_GEN_PATTERN)
    if experiment_path is None or gen_path is None:
        return []
    trials = saved_trials(fs, experiment_path)
    with fs.open_input_stream(gen_path) as f:
        state = cloudpickle.loads(f.readall())

    changes = []
    if state["counter"] < len(trials):
        changes.append(f"search state had created {state['counter']} trials, the experiment "
                       f"state holds {len(trials)}: no further trial for those")
        state["counter"] = len(trials)
    elif state["counter"] > len(trials):
        # Trials created after the experiment state was saved: the restored study never runs
        # them, so it must create as many again to reach --samples.
        changes.append(f"search state had created {state['counter']} trials, the experiment "
                       f"state holds {len(trials)}: {state['counter'] - len(trials)} more to "
                       f"create")
        state["counter"] = len(trials)
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
        payload = cloudpickle.dumps(state)
        with fs.open_output_stream(gen_path) as f:
            f.write(payload)
        for line in changes:
            log.warning("restore of %s: %s", path, line)
    return changes
