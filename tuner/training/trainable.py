"""The Ray Tune function trainable: one trial = build the sampled model, train, report.

The driver passes (via ``tune.with_parameters``) the dataset as Ray object refs of numpy
arrays, read here without copying (and moved to the trial's GPU once, when it has one), and a
:class:`TrialContext` with everything fixed for the study.

What a trial writes, and when (so that the device trains rather than waits):
- every epoch: ``tune.report(metrics)``; the metrics go to the trial's nested MLflow run
  through the trial's outbox (:class:`tuner.tracking.outbox.Outbox`: journalled on local disk,
  sent by a background thread), so training never waits on the tracking server, and an outage
  of the server loses nothing;
- at each ASHA rung (the only epochs where the scheduler can stop the trial) and at the last
  epoch: a Tune checkpoint (weights, AdamW state, scheduler step, resolved config, MLflow run
  id) with the report, and, if the validation AUC improved since the last one, the best
  weights (kept in memory meanwhile) and validation probabilities to MLflow; the outbox is
  flushed first (unless the server is away), so the driver sees every epoch of a trial it stops. The driver
  draws each trial's ROC and confusion-matrix plots once, from those probabilities, when the
  family's trials have ended.
A crash loses at most the epochs since the last rung: ``--resume`` restarts the trial from its
last Tune checkpoint and trains those epochs again (same seeds, same batches). On restart the
trial resumes from ``tune.get_checkpoint()``.
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from tuner.study.config import flatten
from tuner.data.preprocess import METHOD as PREPARATION
from tuner.models import io
from tuner.models.cost import measure_costs
from tuner.training import checkpoint as ckpt
from tuner.training import loop, validation
from tuner.training.fresh import FreshEpochs
from tuner.training.plots import BEST_PROBS
from tuner.tracking import schema
from tuner.tracking.outbox import Outbox
from tuner.tracking.system_metrics import start_system_metrics, stop_system_metrics


class TrialContext(BaseModel):
    """Study-wide, non-sampled settings of every trial of one family."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: str
    img_size: int  # model input side (px); the data are resized on the device if different
    class_names: list[str]
    max_epochs: int
    seed: int
    cpus_per_trial: float = 1.0
    # epochs where the strategy's scheduler decides (tuner.study.search.checkpoint_epochs):
    # checkpoint there
    rungs: list[int] = []
    compile: bool = False  # torch.compile the model
    study_name: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    dataset_name: str
    dataset_digest: str
    dataset_source: str
    dataset_preset: str
    study_config: dict[str, Any] = {}
    outbox_dir: str  # journals of writes waiting for the tracking server (tuner.tracking.outbox)
    objective: str = schema.OBJECTIVE  # the metric ASHA and the searcher maximise
    val_shifts: list[str] = []  # the validation shift suite of a robust study (its data keys:
    robust_reduce: str = "mean"  # tuner.training.validation.shift_data_keys)
    fresh: dict[str, Any] | None = None  # train_data fresh: how to simulate an epoch's training set
    # costs measured once on the trial's device and reported with every epoch (an objective of
    # a multi-objective study, or a promotion limit): tuner.models.cost.COST_METRICS
    cost_metrics: list[str] = []


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    # Arrays from the object store are read-only views of shared memory; the loop never writes
    # to them, so wrapping them without a copy is safe and torch's warning is noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def resolved_config(config: dict[str, Any], ctx: TrialContext) -> dict[str, Any]:
    """The config saved with a trial's checkpoint: enough to rebuild and describe the model."""
    return {
        "family": ctx.family, "img_size": ctx.img_size, "in_chans": 1,
        "class_names": list(ctx.class_names), "model": dict(config.get("model", {})),
        "train": dict(config.get("train", {})), "max_epochs": ctx.max_epochs, "seed": ctx.seed,
        "dataset": {"name": ctx.dataset_name, "digest": ctx.dataset_digest,
                    "source": ctx.dataset_source, "preset": ctx.dataset_preset},
        "study": ctx.study_name,
        "study_config": dict(ctx.study_config),
        "preprocessing": PREPARATION,
    }


def _log_best_epoch(outbox, run_id: str, *, weights: dict[str, torch.Tensor], resolved: dict,
                    probs: np.ndarray, labels: np.ndarray, epoch: int) -> None:
    """Artifacts of the best epoch so far: checkpoint/ (its ``weights``), config.json, and its
    validation probabilities (``BEST_PROBS``), from which the driver draws the trial's plots
    once it has ended (:func:`tuner.training.plots.log_best_epoch_plots`)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt.save_checkpoint(folder / schema.CHECKPOINT_ARTIFACT, weights=weights, config=resolved)
        (folder / schema.CONFIG_ARTIFACT).write_text(
            (folder / schema.CHECKPOINT_ARTIFACT / ckpt.CONFIG_FILE).read_text())
        np.savez(folder / BEST_PROBS, probs=probs.astype(np.float32), labels=labels)
        outbox.artifacts(run_id, folder)
    outbox.tags(run_id, {"best_epoch": str(epoch)})


@dataclass
class _Best:
    """The best epoch so far, in memory: its score, weights (a copy on the training device)
    and validation probabilities; ``logged`` is the epoch last written to MLflow."""

    score: float = -1.0
    epoch: int = 0
    weights: dict[str, torch.Tensor] | None = None
    probs: np.ndarray | None = None
    logged: int = 0

    def update(self, score: float, epoch: int, model: torch.nn.Module, probs: np.ndarray) -> None:
        if score > self.score:
            self.score, self.epoch, self.probs = score, epoch, probs
            self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}


def _placement() -> dict[str, str]:
    """Where the trial runs: Ray node id and IP, the resources Ray assigned, the device."""
    import ray

    context = ray.get_runtime_context()
    assigned = context.get_assigned_resources()
    return {schema.NODE_ID_TAG: context.get_node_id(),
            schema.NODE_IP_TAG: ray.util.get_node_ip_address(),
            schema.ASSIGNED_RESOURCES_TAG: ",".join(f"{k}={v:g}"
                                                    for k, v in sorted(assigned.items())),
            schema.DEVICE_TAG: str(loop.pick_device()), schema.WORKER_PID_TAG: str(os.getpid())}


def _trial_checkpoints_up_to(checkpoint) -> list:
    """The Tune checkpoints of ``checkpoint``'s trial up to it, oldest first, on the storage
    it is on (a local folder or S3): what a damaged ``checkpoint`` may fall back to."""
    from ray import tune

    from tuner.study.tune_state import trial_checkpoint_paths

    parent, name = checkpoint.path.rstrip("/").rsplit("/", 1)
    current = ckpt.checkpoint_index(name)
    try:
        siblings = trial_checkpoint_paths(checkpoint.filesystem, parent)
    except OSError:
        return [checkpoint]
    return [tune.Checkpoint(path, filesystem=checkpoint.filesystem) for index, path in siblings
            if current is not None and index < current] + [checkpoint]


def _clear_failed_attempt(client, run_id: str) -> None:
    """A run that an earlier attempt of this trial ended as failed is being retried: its stop
    reason and message go (the driver tagged the cause of the retry and counts the attempts,
    ``lenstune.retried_after`` and ``lenstune.retries``), so the run ends with this attempt's."""
    tags = client.get_run(run_id).data.tags
    if tags.get(schema.STOP_REASON_TAG) == schema.STOP_FAILED:
        for key in (schema.STOP_REASON_TAG, schema.STOP_MESSAGE_TAG):
            if key in tags:
                client.delete_tag(run_id, key)


def _replay_finished_run(ctx: TrialContext, trial_id: str) -> bool:
    """A trial whose MLflow run ended ``completed`` or ``asha_stopped`` under an earlier driver
    but that Tune's restored state lists as unfinished (the driver was killed before the state
    recording its end was saved; Tune would restart it, or resume it from a rung checkpoint
    past which the scheduler had stopped it): report its logged epochs again, from MLflow, so
    the scheduler and the searcher learn what it scored, and train nothing. Its run is left as
    it ended. False when the trial has no such run (a new trial, or a retry after a failure)."""
    from ray import tune

    from tuner.tracking import writer as tracking
    from tuner.tracking.store import mlflow_client

    client = mlflow_client(ctx.tracking_uri)
    run_id = tracking.find_trial_run(client, ctx.experiment_id, ctx.parent_run_id, trial_id)
    if run_id is None:
        return False
    run = client.get_run(run_id)
    if run.data.tags.get(schema.STOP_REASON_TAG) not in schema.FINISHED_REASONS:
        return False
    history = {}
    keys = {schema.OBJECTIVE, schema.BEST_OBJECTIVE, schema.VAL_LOSS, schema.VAL_ACC,
            ctx.objective, schema.best_of(ctx.objective)}
    for key in sorted(keys):
        for metric in client.get_metric_history(run_id, key):
            history.setdefault(metric.step, {})[key] = metric.value
    from tuner.models.cost import COST_METRICS

    costs = {k: v for k, v in run.data.metrics.items() if k in COST_METRICS}
    for epoch in sorted(history):
        tune.report({**history[epoch], **costs, schema.EPOCH: float(epoch), "mlflow_run_id": run_id,
                     "replayed": 1.0})
    return True


def _exploit_record(state: dict, donor: str, config: dict[str, Any]) -> dict[str, Any]:
    """What a PBT exploit did: the epoch and trial whose checkpoint this trial continues, the
    configuration it runs now, and the train hyperparameters PBT changed from the donor's."""
    before = state["config"].get("train", {})
    now = config.get("train", {})
    changed = {k: [before.get(k), v] for k, v in now.items() if before.get(k) != v}
    return {"epoch": int(state["epoch"]), "copied_from_trial": donor, "config": config,
            "donor_model": state["config"].get("model", {}), "changed": changed}


def _own_best(client, run_id: str, objective: str) -> tuple[float, float]:
    """(best objective, best validation AUC) a run has logged so far; -1 when none."""
    metrics = client.get_run(run_id).data.metrics
    return (float(metrics.get(schema.best_of(objective), -1.0)),
            float(metrics.get(schema.BEST_OBJECTIVE, -1.0)))


def _log_exploit(client, run_id: str, exploit: dict[str, Any]) -> None:
    """The exploit on the trial's run: ``pbt/exploit_epoch_<e>.json`` (MLflow params are
    immutable, so the configuration the run trains from here on is recorded there) and tags
    counting the exploits and naming the last."""
    import json

    from tuner.tracking import writer as tracking

    epoch = exploit["epoch"]
    client.log_text(run_id, json.dumps(exploit, indent=2, default=str),
                    f"pbt/exploit_epoch_{epoch}.json")
    tags = client.get_run(run_id).data.tags
    count = int(tags.get(schema.PBT_EXPLOITS_TAG, "0")) + 1
    changed = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in exploit["changed"].items())
    client.log_batch(run_id, tags=[
        tracking.RunTag(schema.PBT_EXPLOITS_TAG, str(count)),
        tracking.RunTag(schema.PBT_LAST_EXPLOIT_TAG,
                        f"epoch {epoch}: copied trial {exploit['copied_from_trial']}'s checkpoint "
                        f"and configuration; {changed or 'nothing perturbed'}"[:5000])])


def train_trial(config: dict[str, Any], *, data: dict[str, Any], context: dict[str, Any]) -> None:
    """Ray Tune function trainable. ``config`` = ``{"model": {...}, "train": {...}}`` sampled
    from the family's search space; ``data`` = object refs (or arrays) of ``train_images``
    (N,1,H,W) float32, ``train_labels`` (N,), ``val_images``, ``val_labels``."""
    import ray
    from tuner.tracking.store import mlflow_client
    from ray import tune

    from tuner.tracking import writer as tracking
    from tuner.study.search_space import TrainHParams

    ctx = TrialContext(**context)
    # Tune hands a worker to its next trial once the last trial's thread has ended, waiting
    # 2 s by default; freeing a trial's memory can take longer on a busy node, and a failed
    # hand-over ends the next trial in error before it starts. Read by Tune in this process.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "120")
    hp = TrainHParams(**config["train"])
    trial_id = tune.get_context().get_trial_id() or "local"
    if _replay_finished_run(ctx, trial_id):
        return  # it finished under an earlier driver; Tune's restored state had lost that
    torch.set_num_threads(max(int(ctx.cpus_per_trial), 1))
    device = loop.pick_device()

    arrays = {k: (ray.get(v) if isinstance(v, ray.ObjectRef) else v) for k, v in data.items()}
    x_train, y_train = loop.to_device(_as_tensor(arrays["train_images"]),
                                      _as_tensor(arrays["train_labels"]), device)
    x_val, _ = loop.to_device(_as_tensor(arrays["val_images"]),
                              _as_tensor(arrays["val_labels"]), device)
    y_val_np = np.asarray(arrays["val_labels"])  # metrics are computed on the host
    shift_sets = {}
    for name in ctx.val_shifts:
        images_key, labels_key = validation.shift_data_keys(name)
        shift_sets[name] = (loop.to_device(_as_tensor(arrays[images_key]),
                                           _as_tensor(arrays[labels_key]), device)[0],
                            np.asarray(arrays[labels_key]))
    fresh = FreshEpochs(ctx.fresh, seed=ctx.seed, device=device) if ctx.fresh else None

    resolved = resolved_config(config, ctx)
    torch.manual_seed(ctx.seed)  # same init for a config whether run first or re-run after a crash
    network = io.build_network(io.ModelConfig.from_checkpoint_config(resolved)).train()
    convolutional = any(isinstance(m, torch.nn.Conv2d) for m in network.modules())
    model = loop.prepare_model(network, device, compile=ctx.compile, convolutional=convolutional)
    network = loop.unwrap(model)  # the module whose weights are saved (no compile wrapper)
    # latency and size do not depend on the weights: measured once, before training
    costs = measure_costs(network, ctx.img_size, ctx.cost_metrics) if ctx.cost_metrics else {}
    optimizer = loop.make_optimizer(model, hp)
    n_steps = loop.steps_per_epoch(len(y_train), int(hp.batch_size))
    scheduler = loop.make_scheduler(optimizer, hp, steps_per_epoch=n_steps, max_epochs=ctx.max_epochs)
    scaler = (torch.amp.GradScaler("cuda") if device.type == "cuda"
              and not torch.cuda.is_bf16_supported() else None)

    start_epoch, best, run_id, fallback = 0, _Best(), None, None
    best_val_auc = -1.0
    restored = tune.get_checkpoint()
    state = None
    if restored is not None:
        def restore(folder: Path) -> dict:
            ckpt.restore_weights(network, folder, device)
            ckpt.load_optimizer(optimizer, folder)
            return {**ckpt.read_state(folder), "config": ckpt.read_config(folder)}

        choice = ckpt.newest_intact_checkpoint(_trial_checkpoints_up_to(restored), use=restore)
        state, fallback = choice.value, choice.warning()
        if fallback:  # a damaged checkpoint (torn write, bad disk): the older one, or none
            warnings.warn(f"trial {trial_id}: {fallback}", stacklevel=1)
            if state is None:  # nothing intact: the trial starts over, from fresh weights
                torch.manual_seed(ctx.seed)
                network.load_state_dict(
                    io.build_network(io.ModelConfig.from_checkpoint_config(resolved)).state_dict())
    exploit = None  # PBT: this trial continues another trial's checkpoint
    if state is not None:
        donor = state.get("trial_id")
        if donor is not None and donor != trial_id:
            exploit = _exploit_record(state, donor, config)
            # this trial's own run and best, not the donor's
            state = {**state, "mlflow_run_id": None, "best": -1.0, "best_val_auc": -1.0,
                     "best_epoch": int(state["epoch"])}
        # the (possibly perturbed) config's weight decay, not the one saved with the optimizer
        optimizer.param_groups[0]["weight_decay"] = float(hp.weight_decay)
        start_epoch = int(state["epoch"])
        # The best epoch up to the checkpoint is in MLflow already (written with it).
        best.score = float(state["best"])
        best_val_auc = float(state.get("best_val_auc", best.score))
        best.epoch = best.logged = int(state.get("best_epoch", start_epoch))
        run_id = state.get("mlflow_run_id")
        scheduler.last_epoch = int(state["scheduler_step"])  # LambdaLR recomputes from this
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * scheduler.lr_lambdas[0](scheduler.last_epoch)

    client = mlflow_client(ctx.tracking_uri)
    if exploit is not None:  # the run the driver opened, or the one this trial trained in
        run_id = tracking.find_trial_run(client, ctx.experiment_id, ctx.parent_run_id, trial_id)
        if run_id is not None:
            best.score, best_val_auc = _own_best(client, run_id, ctx.objective)
    if run_id is None:
        params = {**flatten(config), "family": ctx.family, "dataset_digest": ctx.dataset_digest,
                  "dataset_preset": ctx.dataset_preset, "img_size": ctx.img_size,
                  "objective": ctx.objective}
        dataset = tracking.DatasetInfo(ctx.dataset_name, ctx.dataset_digest, ctx.dataset_source,
                                       ctx.dataset_preset)
        run_id = tracking.start_trial_run(
            client, experiment_id=ctx.experiment_id, parent_run_id=ctx.parent_run_id,
            study_name=ctx.study_name, trial_id=trial_id, family=ctx.family,
            run_name=f"{ctx.family}-{trial_id}", params=params, dataset=dataset,
            tags=_placement())
    else:
        client.update_run(run_id, status="RUNNING")
        client.log_batch(run_id, tags=[tracking.RunTag(k, v) for k, v in _placement().items()])
    _clear_failed_attempt(client, run_id)
    if exploit is not None:
        _log_exploit(client, run_id, exploit)
    if costs:
        client.log_batch(run_id, metrics=[tracking.Metric(k, v, int(time.time() * 1000), 0)
                                          for k, v in costs.items()])
    if fallback:
        client.set_tag(run_id, schema.CHECKPOINT_FALLBACK_TAG, fallback[:1000])
    # Epochs a previous attempt logged before dying without a checkpoint are re-trained
    # (deterministically) but not logged twice, and not reported to Tune before the last of
    # them: the trial went on past those epochs, so the scheduler's decisions at them were
    # made already and a restored scheduler must not take them again.
    logged = {m.step for m in client.get_metric_history(run_id, schema.OBJECTIVE)}
    decided_before = max(logged, default=0)
    checkpoint_epochs = set(ctx.rungs) | {ctx.max_epochs}
    outbox = Outbox(client, ctx.outbox_dir, f"trial-{trial_id}", adopt=True)
    monitor = start_system_metrics(run_id, ctx.tracking_uri)  # system/* metrics of the run

    reported = False
    epoch = start_epoch
    try:
        for epoch in range(start_epoch + 1, ctx.max_epochs + 1):
            # Seeds depend on (trial seed, epoch) so a resumed trial draws what it would have.
            gen = torch.Generator(device=x_train.device).manual_seed(ctx.seed * 100003 + epoch)
            aug_gen = torch.Generator(device=device).manual_seed(ctx.seed * 100019 + epoch)
            if fresh is not None:  # a new training set, simulated on the device for this epoch
                x_train, y_train = fresh.epoch(epoch)
            stats = loop.train_one_epoch(
                model, x_train, y_train, optimizer=optimizer, scheduler=scheduler, hp=hp,
                device=device, img_size=ctx.img_size, generator=gen, aug_generator=aug_gen,
                scaler=scaler)
            measured, probs = validation.epoch_values(
                model, x_val=x_val, y_val=y_val_np, shift_sets=shift_sets, img_size=ctx.img_size,
                device=device, class_names=list(ctx.class_names), robust_reduce=ctx.robust_reduce)
            values = {
                schema.TRAIN_LOSS: stats.train_loss, **measured,
                schema.EPOCH_SECONDS: stats.seconds, schema.IMAGES_PER_SECOND: stats.images_per_second,
                "epoch": float(epoch),
            }
            if fresh is not None:
                values[schema.SIMULATION_SECONDS] = fresh.last_seconds
            best.update(values[ctx.objective], epoch, network, probs)
            values[schema.best_of(ctx.objective)] = best.score
            best_val_auc = max(best_val_auc, values[schema.OBJECTIVE])
            values[schema.BEST_OBJECTIVE] = best_val_auc  # also in a study on another objective
            if epoch not in logged:
                outbox.metrics(run_id, values, step=epoch)
            if epoch < decided_before:
                continue
            if epoch not in checkpoint_epochs:
                tune.report({**values, **costs, "mlflow_run_id": run_id})
                reported = True
                continue
            if best.epoch > best.logged:
                _log_best_epoch(outbox, run_id, weights=best.weights, resolved=resolved,
                                probs=best.probs, labels=y_val_np, epoch=best.epoch)
                best.logged = best.epoch
            outbox.flush()
            with tempfile.TemporaryDirectory() as tmp:
                state = {"epoch": epoch, "trial_id": trial_id, "best": best.score,
                         "best_epoch": best.logged,
                         "best_val_auc": best_val_auc,
                         "mlflow_run_id": run_id, "scheduler_step": scheduler.last_epoch}
                ckpt.save_checkpoint(Path(tmp), model=network, config=resolved,
                                     optimizer=optimizer, state=state)
                tune.report({**values, **costs, "mlflow_run_id": run_id},
                            checkpoint=tune.Checkpoint.from_directory(tmp))
                reported = True
    except loop.NonFiniteLossError as exc:  # the configuration's fault: a retry fails again
        outbox.end_run(run_id, schema.STOP_FAILED, f"{type(exc).__name__}: {exc}")
        if not reported:  # Tune refuses a trial that ends without its metric: the worst score
            tune.report({ctx.objective: 0.0, schema.best_of(ctx.objective): 0.0,
                         schema.EPOCH: float(epoch), "mlflow_run_id": run_id,
                         "non_finite_loss": 1.0})
    except Exception as exc:  # Tune retries it (max_failures) from its last checkpoint
        outbox.end_run(run_id, schema.STOP_FAILED, f"{type(exc).__name__}: {exc}")
        raise
    else:
        outbox.end_run(run_id, schema.STOP_COMPLETED)
    finally:
        stop_system_metrics(monitor)
        # Sent now, or (server away) left in the journal for whoever replays it next.
        outbox.close(raise_errors=False)
        # Free the device memory even when the actor is reused for the next trial.
        del model, network, optimizer, best, x_train, y_train, x_val
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
