"""Fixtures for promotion, prediction, serving and report tests.

Everything is real but micro: a 32 px three-class dataset in the store format, micro `scratch`
transformers trained for a few steps, and MLflow runs laid out as a tuning study writes them
(parent study run + nested trial runs with tags, metrics and ``checkpoint/`` artifacts) in an
embedded sqlite tracking store, whose registry supports aliases.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tuner.data.store import DatasetMeta, SPLITS, combine_digests, split_digest, write_meta

CLASSES = ("no_sub", "cdm", "axion")
SIZE = 32
MICRO = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "mlp_ratio": 2.0,
         "drop_rate": 0.0, "drop_path_rate": 0.0}


def toy_images(labels: np.ndarray, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A lens-like ring whose radius depends on the class (easy to learn); cdm adds bright dots,
    axion a bright line. (N, 1, S, S) float32, min-max normalised per image like DeepLense data."""
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(x, y)
    images = np.empty((len(labels), 1, size, size), np.float32)
    for i, label in enumerate(labels):
        img = np.exp(-((r - size * (0.15 + 0.1 * label + rng.uniform(0, 0.04))) ** 2) / 4.0)
        if label == 1:
            for _ in range(3):
                cy, cx = rng.uniform(-size / 3, size / 3, 2)
                img += 0.8 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 2.0)
        elif label == 2:
            angle = rng.uniform(0, np.pi)
            dist = np.abs(np.cos(angle) * y - np.sin(angle) * x)
            img += 0.5 * np.exp(-dist**2 / 2.0) * (r < size / 3)
        img += rng.normal(0, 0.15, img.shape)
        images[i, 0] = (img - img.min()) / (img.max() - img.min())
    return images


def write_toy_dataset(root: Path, counts: dict[str, int], seed: int = 0, preset: str = "model_ii") -> Path:
    """A dataset in the store format (meta.json + per-split images/labels/params)."""
    rng = np.random.default_rng(seed)
    digests, count_meta = {}, {}
    for split in SPLITS:
        labels = np.repeat(np.arange(len(CLASSES)), counts[split]).astype(np.int64)
        images = toy_images(labels, rng)
        params = {"label": labels.astype(np.float64)}
        folder = root / split
        folder.mkdir(parents=True)
        np.save(folder / "images.npy", images)
        np.save(folder / "labels.npy", labels)
        np.savez(folder / "params.npz", **params)
        digests[split] = split_digest(images, labels, params)
        count_meta[split] = {name: counts[split] for name in CLASSES}
    meta = DatasetMeta(source="simulated", preset=preset, seed=seed, class_names=CLASSES,
                       image_size=SIZE, counts=count_meta, param_names=("label",),
                       digest=combine_digests(digests), split_digests=digests, version="test")
    write_meta(root, meta)
    return root


def train_micro(root: Path, steps: int, seed: int) -> tuple[torch.nn.Module, dict]:
    """A micro scratch transformer trained ``steps`` Adam steps on the train split, and its
    resolved config as a trial checkpoint stores it."""
    from tuner.data import load_split
    from tuner.models import build_model

    torch.manual_seed(seed)
    train = load_split(root, "train")
    model = build_model("scratch", img_size=SIZE, **MICRO)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(train), (32,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(train.images[idx]), train.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    config = {"family": "scratch", "img_size": SIZE, "in_chans": 1, "class_names": list(CLASSES),
              "model": dict(MICRO), "train": {"lr": 3e-3, "batch_size": 32}, "max_epochs": 2,
              "seed": seed, "study": "toy",
              "dataset": {"name": root.name, "digest": train.meta.digest, "source": str(root),
                          "preset": train.meta.preset}}
    return model.eval(), config


def log_study(client, experiment_id: str, name: str, data_root: Path, trials: list[dict],
              params: dict | None = None) -> str:
    """A study as the tuning driver logs it. Each trial dict: family, stop_reason, val_auc
    (list, one per epoch), model, config, and optionally costs ({metric: value}, e.g.
    ``params``). Returns the study run id."""
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param
    from tuner.training.checkpoint import save_checkpoint

    study = client.create_run(experiment_id, run_name=name,
                              tags={"lenstune.kind": "study", "lenstune.study": name})
    sid = study.info.run_id
    client.log_batch(sid, params=[Param(k, str(v)) for k, v in (params or {}).items()])
    meta = json.loads((data_root / "meta.json").read_text())
    dataset = Dataset(name=data_root.name, digest=meta["digest"][:36], source_type="local",
                      source=json.dumps({"uri": str(data_root)}))
    client.log_inputs(sid, datasets=[DatasetInput(dataset, [InputTag("mlflow.data.context", "training")])])
    for i, trial in enumerate(trials):
        run = client.create_run(experiment_id, run_name=f"{name}-{i}", tags={
            "mlflow.parentRunId": sid, "lenstune.kind": "trial", "lenstune.study": name,
            "trial_id": f"{name}_{i:05d}", "family": trial["family"]})
        rid = run.info.run_id
        params = {f"model.{k}": v for k, v in trial["config"]["model"].items()}
        client.log_batch(rid, params=[Param(k, str(v)) for k, v in params.items()])
        now = int(time.time() * 1000)
        client.log_batch(rid, metrics=[
            Metric(key, value, now + step, step)
            for step, auc in enumerate(trial["val_auc"], 1)
            for key, value in (("val_auc_macro", auc), ("best_val_auc_macro", auc),
                               ("epoch_seconds", 1.5))]
            + [Metric(key, float(value), now, 0) for key, value in trial.get("costs", {}).items()])
        ckpt = save_checkpoint(data_root.parent / "ckpt" / rid / "checkpoint",
                               model=trial["model"], config=trial["config"])
        client.log_artifacts(rid, str(ckpt), "checkpoint")
        client.set_tag(rid, "stop_reason", trial["stop_reason"])
        status = {"completed": "FINISHED", "asha_stopped": "KILLED", "failed": "FAILED"}
        client.set_terminated(rid, status=status[trial["stop_reason"]])
    client.set_terminated(sid)
    return sid


@pytest.fixture(scope="session")
def micro_hparams() -> dict:
    """Hyperparameters of the micro `scratch` transformer (~11k parameters at 32 px)."""
    return dict(MICRO)


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "toy"
    return write_toy_dataset(root, {"train": 60, "val": 10, "test": 40})


@pytest.fixture(scope="session")
def other_data(tmp_path_factory) -> Path:
    """Same layout and preset as ``toy_data``, other images (another seed): another digest."""
    root = tmp_path_factory.mktemp("data") / "other"
    return write_toy_dataset(root, {"train": 3, "val": 3, "test": 5}, seed=7)


@pytest.fixture(scope="session")
def micro_models(toy_data):
    """Three models of clearly different quality: untrained, briefly and longer trained."""
    return {"random": train_micro(toy_data, 0, seed=1), "weak": train_micro(toy_data, 4, seed=2),
            "strong": train_micro(toy_data, 30, seed=3)}


@pytest.fixture(scope="session")
def tracking(tmp_path_factory):
    """(tracking URI, MlflowClient, experiment id) of a fresh sqlite store."""
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp_id = client.create_experiment("toy", artifact_location=str(folder / "artifacts"))
    return uri, client, exp_id


@pytest.fixture(scope="session")
def promoted(toy_data, micro_models, tracking):
    """Three studies promoted one after another: weak, then better (champion moves), then worse
    (champion stays, challenger moves). The first study also holds an ASHA-stopped trial with a
    higher validation AUC, which promotion must skip. Returns the three PromotionResults."""
    from tuner.registry.promotion import promote_champion

    uri, client, exp_id = tracking
    (random, random_cfg), (weak, weak_cfg) = micro_models["random"], micro_models["weak"]
    strong, strong_cfg = micro_models["strong"]
    studies = [
        [{"family": "scratch", "stop_reason": "completed", "val_auc": [0.7, 0.8],
          "model": weak, "config": weak_cfg},
         {"family": "scratch", "stop_reason": "asha_stopped", "val_auc": [0.99],
          "model": random, "config": random_cfg}],
        [{"family": "scratch", "stop_reason": "completed", "val_auc": [0.9, 0.97, 0.95],
          "model": strong, "config": strong_cfg}],
        [{"family": "scratch", "stop_reason": "completed", "val_auc": [0.6],
          "model": random, "config": random_cfg}],
    ]
    results, lines = [], []
    for i, trials in enumerate(studies, 1):
        resources = {"cpus_per_trial": 2, "gpus_per_trial": 0.5} if i == 2 else {}
        log_study(client, exp_id, f"study{i}", toy_data, trials, params=resources)
        results.append(promote_champion("toy", tracking_uri=uri, echo=lines.append))
    return {"results": results, "lines": lines}
