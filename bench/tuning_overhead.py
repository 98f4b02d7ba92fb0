"""Overhead of the tuning service: a trial's training throughput (images/s, measured inside
the Ray Tune trial, MLflow logging on) vs a bare PyTorch loop (AdamW, no augmentation, no
Ray, no MLflow) on the same model, data and thread count, in one run.

    python bench/tuning_overhead.py [--family vit] [--epochs 3] [--n-per-class 300]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def bare_loop(model, images, labels, batch_size: int, epochs: int) -> float:
    """Images/s of plain forward/backward/AdamW steps over shuffled batches (last epoch)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rate = 0.0
    for _ in range(epochs):
        order = torch.randperm(len(labels))
        start, seen = time.perf_counter(), 0
        for i in range(len(labels) // batch_size):
            idx = order[i * batch_size:(i + 1) * batch_size]
            loss = F.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(idx)
        rate = seen / (time.perf_counter() - start)
    return rate


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--family", default="vit")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n-per-class", type=int, default=300)
    p.add_argument("--out", type=Path, default=Path("bench/results/tuning_overhead.md"))
    args = p.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import tune

    from tuner.data import ensure_simulated, load_split
    from tuner.search_space import load_search_space
    from tuner.study import load_arrays
    from tuner.training.checkpoint import build_model_from_config
    from tuner.training.trainable import TrialContext, train_trial

    tmp = Path(tempfile.mkdtemp(prefix="ltbench", dir="/tmp"))
    root = ensure_simulated(tmp / "data", "model_ii", args.n_per_class, seed=0, img_size=32)
    arrays, meta = load_arrays(root)
    config = load_search_space(args.family, "micro").sample(0)
    config["train"].update(aug_rotation=False, aug_flip=False)  # the bare loop does none either
    bs = int(config["train"]["batch_size"])
    resolved = {"family": args.family, "img_size": 32, "class_names": list(meta.class_names),
                "model": config["model"]}
    torch.set_num_threads(1)
    torch.manual_seed(0)
    bare = bare_loop(build_model_from_config(resolved), torch.from_numpy(arrays["train_images"]),
                     torch.from_numpy(arrays["train_labels"]), bs, args.epochs)

    from mlflow.tracking import MlflowClient

    from tuner import tracking

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = tracking.ensure_experiment(client, "bench", str(tmp / "artifacts"))
    info = tracking.DatasetInfo("bench", meta.digest, str(root), "model_ii")
    parent = tracking.start_study_run(client, exp, "bench", {}, info)
    ctx = TrialContext(family=args.family, img_size=32, class_names=list(meta.class_names),
                       max_epochs=args.epochs, seed=0, cpus_per_trial=1, study_name="bench",
                       tracking_uri=uri, experiment_id=exp, parent_run_id=parent,
                       dataset_name="bench", dataset_digest=meta.digest, dataset_source=str(root),
                       dataset_preset="model_ii")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    refs = {k: ray.put(v) for k, v in arrays.items()}
    tuner = tune.Tuner(tune.with_parameters(train_trial, data=refs, context=ctx.model_dump()),
                       param_space=config,
                       run_config=tune.RunConfig(storage_path=str(tmp / "studies"), verbose=0))
    result = tuner.fit()[0]
    trial = float(result.metrics_dataframe["images_per_second"].iloc[-1])
    ray.shutdown()
    cpu = subprocess.run("lscpu | grep 'Model name'", shell=True, capture_output=True,
                         text=True).stdout.split(":")[-1].strip()
    ratio = trial / bare
    text = f"""# Tuning overhead: trial training throughput vs a bare PyTorch loop

Command: `python bench/tuning_overhead.py --family {args.family} --epochs {args.epochs} --n-per-class {args.n_per_class}`
Machine: {cpu}, {os.cpu_count()} cores (shared with other work), {platform.python_version()}, torch {torch.__version__}; date {date.today()}.
Model: `{args.family}` micro profile, sampled config (seed 0), 32 px, batch {bs}, 1 thread, augmentation off in both.
Throughput of the last of {args.epochs} epochs over {len(arrays['train_labels'])} train images.

| loop | images/s |
|---|---|
| bare PyTorch (AdamW, no Ray, no MLflow) | {bare:.1f} |
| lenstune trial (Ray Tune function trainable, object-store data, MLflow on) | {trial:.1f} |
| ratio trial / bare | {ratio:.3f} (target >= 0.95) |
"""
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
