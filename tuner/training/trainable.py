"""The Ray Tune function trainable: one trial = build the sampled model, train, report.

The driver passes (via ``tune.with_parameters``) the dataset as Ray object refs of numpy
arrays, read here without copying, and a :class:`TrialContext` with everything fixed for
the study. Each epoch the trial logs to its nested MLflow run, writes a checkpoint
(weights, AdamW state, scheduler step, resolved config, MLflow run id) and calls
``tune.report(metrics, checkpoint=...)``; on restart it resumes from ``tune.get_checkpoint()``.
"""

from __future__ import annotations

import gc
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from tuner import metrics as M
from tuner.config import flatten
from tuner.training import checkpoint as ckpt
from tuner.training import loop
from tuner.training.plots import plot_confusion_matrix, plot_roc_curves


class TrialContext(BaseModel):
    """Study-wide, non-sampled settings of every trial of one family."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: str
    img_size: int  # model input side (px); the data are resized on the device if different
    class_names: list[str]
    max_epochs: int
    seed: int
    cpus_per_trial: float = 1.0
    study_name: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    dataset_name: str
    dataset_digest: str
    dataset_source: str
    dataset_preset: str
    study_config: dict[str, Any] = {}


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
    }


def _log_best_epoch(client, run_id: str, *, model, resolved: dict, probs: np.ndarray,
                    labels: np.ndarray, class_names: list[str], epoch: int) -> None:
    """Artifacts of the best epoch so far: checkpoint/, config.json, ROC and confusion PNGs."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt.save_checkpoint(folder / "checkpoint", model=model, config=resolved)
        (folder / "config.json").write_text((folder / "checkpoint" / ckpt.CONFIG_FILE).read_text())
        plot_roc_curves(probs, labels, class_names, folder / "roc_curves.png",
                        title=f"{resolved['family']} epoch {epoch}")
        plot_confusion_matrix(probs, labels, class_names, folder / "confusion_matrix.png")
        client.log_artifacts(run_id, str(folder))
    client.set_tag(run_id, "best_epoch", str(epoch))


def train_trial(config: dict[str, Any], *, data: dict[str, Any], context: dict[str, Any]) -> None:
    """Ray Tune function trainable. ``config`` = ``{"model": {...}, "train": {...}}`` sampled
    from the family's search space; ``data`` = object refs (or arrays) of ``train_images``
    (N,1,H,W) float32, ``train_labels`` (N,), ``val_images``, ``val_labels``."""
    import ray
    from mlflow.tracking import MlflowClient
    from ray import tune

    from tuner import tracking
    from tuner.search_space import TrainHParams

    ctx = TrialContext(**context)
    hp = TrainHParams(**config["train"])
    trial_id = tune.get_context().get_trial_id() or "local"
    torch.set_num_threads(max(int(ctx.cpus_per_trial), 1))
    device = loop.pick_device()

    arrays = {k: (ray.get(v) if isinstance(v, ray.ObjectRef) else v) for k, v in data.items()}
    x_train, y_train = _as_tensor(arrays["train_images"]), _as_tensor(arrays["train_labels"])
    x_val, y_val_np = _as_tensor(arrays["val_images"]), np.asarray(arrays["val_labels"])

    resolved = resolved_config(config, ctx)
    torch.manual_seed(ctx.seed)  # same init for a config whether run first or re-run after a crash
    model = ckpt.build_model_from_config(resolved).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = loop.make_optimizer(model, hp)
    n_steps = loop.steps_per_epoch(len(y_train), int(hp.batch_size))
    scheduler = loop.make_scheduler(optimizer, hp, steps_per_epoch=n_steps, max_epochs=ctx.max_epochs)
    scaler = (torch.amp.GradScaler("cuda") if device.type == "cuda"
              and not torch.cuda.is_bf16_supported() else None)

    start_epoch, best, run_id = 0, -1.0, None
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as folder:
            ckpt.load_weights(model, Path(folder), device)
            ckpt.load_optimizer(optimizer, Path(folder))
            state = ckpt.read_state(Path(folder))
        start_epoch, best = int(state["epoch"]), float(state["best"])
        run_id = state.get("mlflow_run_id")
        scheduler.last_epoch = int(state["scheduler_step"])  # LambdaLR recomputes from this
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * scheduler.lr_lambdas[0](scheduler.last_epoch)

    client = MlflowClient(ctx.tracking_uri)
    if run_id is None:
        params = {**flatten(config), "family": ctx.family, "dataset_digest": ctx.dataset_digest,
                  "dataset_preset": ctx.dataset_preset, "img_size": ctx.img_size}
        dataset = tracking.DatasetInfo(ctx.dataset_name, ctx.dataset_digest, ctx.dataset_source,
                                       ctx.dataset_preset)
        run_id = tracking.start_trial_run(
            client, experiment_id=ctx.experiment_id, parent_run_id=ctx.parent_run_id,
            study_name=ctx.study_name, trial_id=trial_id, family=ctx.family,
            run_name=f"{ctx.family}-{trial_id}", params=params, dataset=dataset)
    else:
        client.update_run(run_id, status="RUNNING")
    # Epochs a previous attempt logged before dying without a checkpoint are re-trained
    # (deterministically) but not logged twice.
    logged = {m.step for m in client.get_metric_history(run_id, "val_auc_macro")}

    try:
        for epoch in range(start_epoch + 1, ctx.max_epochs + 1):
            # Seeds depend on (trial seed, epoch) so a resumed trial draws what it would have.
            gen = torch.Generator().manual_seed(ctx.seed * 100003 + epoch)
            aug_gen = torch.Generator(device=device).manual_seed(ctx.seed * 100019 + epoch)
            stats = loop.train_one_epoch(
                model, x_train, y_train, optimizer=optimizer, scheduler=scheduler, hp=hp,
                device=device, img_size=ctx.img_size, generator=gen, aug_generator=aug_gen,
                scaler=scaler)
            probs = loop.predict_proba(model, x_val, device=device, img_size=ctx.img_size)
            report = M.classification_report(probs, y_val_np, list(ctx.class_names))
            values = {
                "train_loss": stats.train_loss,
                "val_loss": loop.cross_entropy_of_probs(probs, y_val_np),
                "val_acc": report["acc"], "val_auc_macro": report["auc_macro"],
                **{f"val_auc_{c}": report[f"auc_{c}"] for c in ctx.class_names},
                "epoch_seconds": stats.seconds, "images_per_second": stats.images_per_second,
                "epoch": float(epoch),
            }
            if values["val_auc_macro"] > best:
                best = values["val_auc_macro"]
                _log_best_epoch(client, run_id, model=model, resolved=resolved, probs=probs,
                                labels=y_val_np, class_names=list(ctx.class_names), epoch=epoch)
            values["best_val_auc_macro"] = best
            if epoch not in logged:
                tracking.log_epoch(client, run_id, values, step=epoch)
            with tempfile.TemporaryDirectory() as tmp:
                state = {"epoch": epoch, "best": best, "mlflow_run_id": run_id,
                         "scheduler_step": scheduler.last_epoch}
                ckpt.save_checkpoint(Path(tmp), model=model, config=resolved,
                                     optimizer=optimizer, state=state)
                tune.report({**values, "mlflow_run_id": run_id},
                            checkpoint=tune.Checkpoint.from_directory(tmp))
        tracking.end_trial_run(client, run_id, "completed")
    except Exception as exc:
        tracking.end_trial_run(client, run_id, "failed", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        # Free the device memory even when the actor is reused for the next trial.
        del model, optimizer
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
