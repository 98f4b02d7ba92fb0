"""MLflow tracking of studies: one parent run per study, one nested run per trial.

Conventions (what promotion and reports rely on):
- study run: tags ``lenstune.kind=study``, ``lenstune.study=<study name>``; params are the
  resolved study config; artifacts ``leaderboard.csv``, ``leaderboard.png``,
  ``search_space/<family>.json``, ``param_importances/<family>.json``, ``study_config.json``.
- trial run: tags ``mlflow.parentRunId``, ``lenstune.kind=trial``, ``trial_id``, ``family``,
  ``lenstune.study``, ``stop_reason`` in schema.STOP_REASONS (completed, asha_stopped, failed, or a study-level stop) (+ ``stop_message``);
  params are the flattened sampled config (``model.depth``, ``train.lr``, ...) plus ``family``,
  ``dataset_digest``, ``dataset_preset``; per-epoch metrics ``train_loss, val_loss, val_acc,
  val_auc_macro, val_auc_<class>, epoch_seconds, images_per_second, best_val_auc_macro``;
  artifacts at the best epoch: ``checkpoint/model.safetensors``, ``checkpoint/config.json``,
  ``config.json``, ``roc_curves.png``, ``confusion_matrix.png``.
Only the MLflow client API is used (no global active run), so trials in any process can log.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from tuner.tracking import schema

class TrackingError(RuntimeError):
    """The tracking server cannot be reached or refuses a request."""


@dataclass(frozen=True)
class DatasetInfo:
    """How a dataset is named in MLflow: name, content digest, source path, preset."""

    name: str
    digest: str
    source: str
    preset: str


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast (TrackingError) when ``uri`` cannot work, before anything is written:
    an HTTP server must answer an authenticated API call (``tuner.tracking.auth``); a sqlite
    file's folder must be creatable."""
    if uri.startswith(("http://", "https://")):
        from tuner.tracking.auth import TrackingServerError, check_tracking_server

        try:
            check_tracking_server(uri, timeout_s)
        except TrackingServerError as exc:
            raise TrackingError(str(exc)) from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        if folder.exists() and not folder.is_dir():
            raise TrackingError(f"tracking URI {uri}: {folder} is not a folder")
    elif "://" not in uri:
        raise TrackingError(
            f"tracking URI {uri!r} is not allowed; use http(s)://host:port, sqlite:///path or "
            "postgresql://... (MLflow >= 3.13 refuses the plain file store)"
        )


def bound_request_retries(limit_s: float) -> None:
    """Have MLflow's client give up on a request after retrying for about ``limit_s`` seconds
    (its own default retries for some 4 minutes): a study waits out an outage of the tracking
    server for its ``tracking_outage_limit_s`` and not much longer, also where it calls MLflow
    directly. Sets ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` for this process and the local Ray
    workers it starts, unless the user has set it."""
    import math

    if "MLFLOW_HTTP_REQUEST_MAX_RETRIES" in os.environ:
        return
    # MLflow sleeps backoff_factor (2 s) * 2**i before retry i: n retries wait 2 * (2**n - 1) s.
    retries = max(1, min(10, math.ceil(math.log2(limit_s / 2 + 1))))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(retries)


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None = None) -> str:
    """Id of experiment ``name``, created (with ``artifact_location`` if given) when missing.
    Its ``mlflow.experimentKind`` tag (set when missing) makes MLflow 3's UI open it on the
    runs table rather than the GenAI overview."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=artifact_location,
                                        tags={schema.EXPERIMENT_KIND_TAG: schema.EXPERIMENT_KIND})
    if schema.EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, schema.EXPERIMENT_KIND_TAG,
                                  schema.EXPERIMENT_KIND)
    return experiment.experiment_id


def dataset_input(info: DatasetInfo, context: str = "training") -> DatasetInput:
    # MLflow caps an input's digest at 36 characters; the full SHA-256 is a run param.
    dataset = Dataset(name=info.name, digest=info.digest[:36], source_type="local",
                      source=json.dumps({"uri": info.source}))
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])


def _params(values: dict[str, Any]) -> list[Param]:
    # MLflow caps a param value at 6000 characters; ours are short scalars.
    return [Param(str(k), str(v)[:6000]) for k, v in values.items()]


def _study_runs(client: MlflowClient, experiment_id: str, study_name: str) -> list:
    """The parent runs named ``study_name``, oldest first, ties by run id (one, normally)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{schema.KIND_TAG}` = 'study' and tags.`{schema.STUDY_TAG}` = '{study_name}'",
        max_results=50,
    )
    return sorted(runs, key=lambda run: (run.info.start_time, run.info.run_id))


def find_study_run(client: MlflowClient, experiment_id: str, study_name: str):
    """The parent run of ``study_name`` in the experiment, or None."""
    runs = _study_runs(client, experiment_id, study_name)
    return runs[0] if runs else None


class StudyNameTaken(TrackingError):
    """A study of that name exists (or was started at the same moment by another process)."""


def start_study_run(client: MlflowClient, experiment_id: str, study_name: str,
                    params: dict[str, Any], dataset: DatasetInfo, resume: bool = False) -> str:
    """Create the study's parent run, or on ``resume`` return the existing one; returns its id.
    Raises StudyNameTaken when, without ``resume``, the name is taken: a study never adds its
    trials to another's run. Two processes creating the same name at once both see both runs:
    the later one deletes its own and raises."""
    existing = find_study_run(client, experiment_id, study_name)
    if existing is not None:
        if not resume:
            raise StudyNameTaken(f"study {study_name!r} exists (parent run "
                                 f"{existing.info.run_id}); pass --resume to continue it, or "
                                 "another --study-name")
        if existing.info.status != "RUNNING":
            client.update_run(existing.info.run_id, status="RUNNING")
        return existing.info.run_id
    run = client.create_run(experiment_id, run_name=study_name,
                            tags={schema.KIND_TAG: schema.KIND_STUDY, schema.STUDY_TAG: study_name})
    first = find_study_run(client, experiment_id, study_name)
    if first is not None and first.info.run_id != run.info.run_id:
        client.delete_run(run.info.run_id)
        raise StudyNameTaken(f"study {study_name!r} was started by another process at the same "
                             "moment; give another --study-name")
    client.log_batch(run.info.run_id, params=_params(params))
    client.log_inputs(run.info.run_id, datasets=[dataset_input(dataset)])
    return run.info.run_id


def _trial_runs_of(client: MlflowClient, experiment_id: str, parent_run_id: str,
                   trial_id: str) -> list:
    """The runs of one trial under ``parent_run_id``, oldest first, ties by run id (one,
    normally): every process that lists them sees the same first."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{schema.TRIAL_ID_TAG}` = '{trial_id}' and "
                      f"tags.`{schema.PARENT_RUN_TAG}` = '{parent_run_id}'", max_results=50)
    return sorted(runs, key=lambda run: (run.info.start_time, run.info.run_id))


def find_trial_run(client: MlflowClient, experiment_id: str, parent_run_id: str, trial_id: str):
    """Run id of a trial's nested run under ``parent_run_id`` (the oldest), or None."""
    runs = _trial_runs_of(client, experiment_id, parent_run_id, trial_id)
    return runs[0].info.run_id if runs else None


def start_trial_run(client: MlflowClient, *, experiment_id: str, parent_run_id: str,
                    study_name: str, trial_id: str, family: str, run_name: str,
                    params: dict[str, Any], dataset: DatasetInfo,
                    tags: dict[str, str] | None = None, reuse_status: bool = True) -> str:
    """The trial's nested run: reused when one exists for this trial (made by the driver when
    the trial started, or by an earlier attempt), set RUNNING unless ``reuse_status`` is
    false; else created with ``tags`` beside the conventional ones."""
    existing = find_trial_run(client, experiment_id, parent_run_id, trial_id)
    if existing is not None:
        if reuse_status:
            client.update_run(existing, status="RUNNING")
        if tags:
            client.log_batch(existing, tags=[RunTag(k, v) for k, v in tags.items()])
        return existing
    tags = {**(tags or {}), schema.PARENT_RUN_TAG: parent_run_id, schema.KIND_TAG: schema.KIND_TRIAL,
            schema.STUDY_TAG: study_name, schema.TRIAL_ID_TAG: trial_id,
            schema.FAMILY_TAG: family}
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    # The driver (when the trial starts) and the trial itself may both find no run and both
    # make one: the oldest is the trial's run, any other is deleted by whoever sees it.
    runs = _trial_runs_of(client, experiment_id, parent_run_id, trial_id)
    for extra in runs[1:]:
        try:
            client.delete_run(extra.info.run_id)
        except Exception:  # the other party deleted it first
            pass
    if runs and runs[0].info.run_id != run.info.run_id:
        return runs[0].info.run_id
    client.log_batch(run.info.run_id, params=_params(params))
    client.log_inputs(run.info.run_id, datasets=[dataset_input(dataset)])
    return run.info.run_id


def open_trial_run(client: MlflowClient, *, experiment_id: str, parent_run_id: str,
                   study_name: str, trial_id: str, family: str, params: dict[str, Any],
                   dataset: dict[str, str]) -> str:
    """The trial's run as the driver opens it when Ray starts the trial (before the trial has
    logged anything): created, or found and left as it is."""
    return start_trial_run(client, experiment_id=experiment_id, parent_run_id=parent_run_id,
                           study_name=study_name, trial_id=trial_id, family=family,
                           run_name=f"{family}-{trial_id}", params=params,
                           dataset=DatasetInfo(**dataset), reuse_status=False)


def settle_trial_end(client: MlflowClient, *, experiment_id: str, parent_run_id: str,
                     trial_id: str, run_id: str | None, stop_reason: str, message: str = "",
                     replayed: bool = False) -> None:
    """End a trial's run as the driver saw the trial end (found by ``run_id``, else by its
    trial id; nothing when the trial never had a run). A finished trial replayed after a
    restore keeps how it ended; a failure the trial recorded itself keeps its own message
    (Ray's wrapper says less)."""
    run_id = run_id or find_trial_run(client, experiment_id, parent_run_id, trial_id)
    if run_id is None:
        return
    run = client.get_run(run_id)
    ended = run.data.tags.get(schema.STOP_REASON_TAG)
    if replayed and ended in schema.FINISHED_REASONS:
        return
    if (ended == schema.STOP_FAILED and run.data.tags.get(schema.STOP_MESSAGE_TAG)
            and run.info.status == "FAILED"):
        return
    end_trial_run(client, run_id, stop_reason, message)


def tag_trial(client: MlflowClient, *, experiment_id: str, parent_run_id: str, trial_id: str,
              tags: dict[str, str]) -> None:
    """Tags on a trial's run, found by its trial id (nothing when it has none yet)."""
    run_id = find_trial_run(client, experiment_id, parent_run_id, trial_id)
    if run_id is not None:
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def close_open_trial_runs(client: MlflowClient, experiment_id: str, parent_run_id: str,
                          message: str) -> list[str]:
    """End as ``failed`` (with ``message``) every trial run of a study still RUNNING once no
    trial of it runs any more: a run whose end was never recorded (its trial ended while the
    tracking server was away and the write was lost with its node). Returns their ids."""
    left = [run.info.run_id for run in list_trial_runs(client, experiment_id, parent_run_id)
            if run.info.status == "RUNNING"]
    for run_id in left:
        end_trial_run(client, run_id, schema.STOP_FAILED, message)
    return left


def log_epoch(client: MlflowClient, run_id: str, values: dict[str, float], step: int) -> None:
    """Log one epoch's metrics at ``step`` (the epoch number, from 1), timestamped now."""
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])


def end_trial_run(client: MlflowClient, run_id: str, stop_reason: str, message: str = "") -> None:
    """Tag the stop reason and end the run: FINISHED (completed), KILLED (stopped) or FAILED."""
    if stop_reason not in schema.STOP_REASONS:
        raise ValueError(f"stop_reason {stop_reason!r} not in {schema.STOP_REASONS}")
    # the message is always written, so an earlier attempt's message never outlives it
    tags = [RunTag(schema.STOP_REASON_TAG, stop_reason),
            RunTag(schema.STOP_MESSAGE_TAG, message[:4000])]
    client.log_batch(run_id, tags=tags)
    status = schema.RUN_STATUS[stop_reason]
    client.set_terminated(run_id, status=status)


def list_trial_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list:
    """All nested trial runs of a study run (any status)."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
            max_results=1000, page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def finished_trial_ids(client: MlflowClient, experiment_id: str, parent_run_id: str,
                       family: str) -> set[str]:
    """Trial ids of the ``family`` trial runs of a study that ended ``completed`` or
    ``asha_stopped``: trials that count, whatever a restored Tune state says of them."""
    return {run.data.tags.get(schema.TRIAL_ID_TAG, "")
            for run in list_trial_runs(client, experiment_id, parent_run_id)
            if run.data.tags.get(schema.FAMILY_TAG) == family
            and run.data.tags.get(schema.STOP_REASON_TAG) in schema.FINISHED_REASONS}


def delete_orphan_trial_runs(client: MlflowClient, experiment_id: str, parent_run_id: str,
                             family: str, known: Callable[[str], bool]) -> list[str]:
    """Soft-delete the ``family`` trial runs of a study whose trial id is not ``known`` (to
    the trials Tune has after a resume) and return their run ids.

    A driver killed between starting a trial and uploading the experiment state that names it
    leaves an MLflow run for a trial the restored study never heard of; the restored searcher
    samples a new trial in its place. Without this the study would count one run too many.
    The run stays restorable from MLflow's deleted runs (``mlflow runs restore``). A run that
    ended ``completed`` or ``asha_stopped`` is never an orphan: the trial finished and counts
    (:func:`finished_trial_ids`)."""
    orphans = [run.info.run_id for run in list_trial_runs(client, experiment_id, parent_run_id)
               if run.data.tags.get(schema.KIND_TAG) == schema.KIND_TRIAL
               and run.data.tags.get(schema.FAMILY_TAG) == family
               and not known(run.data.tags.get(schema.TRIAL_ID_TAG, ""))
               and run.data.tags.get(schema.STOP_REASON_TAG) not in schema.FINISHED_REASONS]
    for run_id in orphans:
        client.set_tag(run_id, schema.ORPHANED_TAG, "trial unknown to the resumed study")
        client.set_terminated(run_id, status="KILLED")
        client.delete_run(run_id)
    return orphans


def leaderboard_rows(runs: list) -> list[dict[str, Any]]:
    """One row per trial run, best first by its study's objective (``objective``: the metric,
    ``best_objective``: its best value; trials without a score last); ``best_val_auc_macro``
    is the best validation macro AUC whatever the objective."""
    rows = []
    for run in runs:
        m, t = run.data.metrics, run.data.tags
        objective = run.data.params.get("objective", schema.OBJECTIVE)
        rows.append({
            "family": t.get(schema.FAMILY_TAG, ""), "trial_id": t.get(schema.TRIAL_ID_TAG, ""),
            "run_id": run.info.run_id, "status": run.info.status,
            schema.STOP_REASON_TAG: t.get(schema.STOP_REASON_TAG, ""),
            "objective": objective,
            "best_objective": m.get(schema.best_of(objective), float("nan")),
            schema.BEST_OBJECTIVE: m.get(schema.BEST_OBJECTIVE, float("nan")),
            "last_val_auc_macro": m.get(schema.OBJECTIVE, float("nan")),
            "val_acc": m.get(schema.VAL_ACC, float("nan")),
            "epochs": int(m.get(schema.EPOCH, 0)),
            schema.STOP_MESSAGE_TAG: t.get(schema.STOP_MESSAGE_TAG, ""),
        })
    rows.sort(key=lambda r: -r["best_objective"] if r["best_objective"] == r["best_objective"] else 1.0)
    return rows


def format_leaderboard(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of leaderboard rows (a column for the objective when it is not the
    validation AUC)."""
    robust = any(r.get("objective", schema.OBJECTIVE) != schema.OBJECTIVE for r in rows)
    extra = f" {'best obj':>8}" if robust else ""
    header = (f"{'rank':>4}  {'family':<12} {'trial':<14}{extra} {'best AUC':>8} {'acc':>6} "
              f"{'epochs':>6}  stop")
    lines = [header, "-" * len(header)]
    for i, r in enumerate(rows, 1):
        own = f" {r['best_objective']:>8.4f}" if robust else ""
        lines.append(f"{i:>4}  {r['family']:<12} {r['trial_id']:<14}{own} "
                     f"{r['best_val_auc_macro']:>8.4f} {r['val_acc']:>6.3f} {r['epochs']:>6}  "
                     f"{r['stop_reason']}")
    return "\n".join(lines)


def write_leaderboard(rows: list[dict[str, Any]], folder: Path) -> tuple[Path, Path]:
    """``leaderboard.csv`` and ``leaderboard.png`` (best AUC per trial, coloured by family)."""
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = folder / "leaderboard.csv", folder / "leaderboard.png"
    fields = list(rows[0]) if rows else ["family", "trial_id", schema.BEST_OBJECTIVE]
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.35 * max(len(rows), 3) + 1))
    families = sorted({r["family"] for r in rows})
    colours = {f: plt.cm.tab10(i % 10) for i, f in enumerate(families)}
    labels = [f"{r['family']} {r['trial_id']} ({r['stop_reason'] or r['status']})" for r in rows]
    ax.barh(range(len(rows)), [r["best_objective"] for r in rows],
            color=[colours[r["family"]] for r in rows])
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    finite = [r["best_objective"] for r in rows if r["best_objective"] == r["best_objective"]]
    ax.set_xlim(max(min(finite, default=0.0) - 0.05, 0.0), 1.0)
    objective = rows[0].get("objective", schema.OBJECTIVE) if rows else schema.OBJECTIVE
    ax.set_xlabel("best validation macro AUC" if objective == schema.OBJECTIVE
                  else f"best {objective} (macro AUC over the validation shift suite)")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return csv_path, png_path


def finish_study_run(client: MlflowClient, run_id: str, status: str = "FINISHED") -> None:
    client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.from_string(status)))
