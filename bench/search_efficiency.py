"""Search efficiency: Optuna TPE + ASHA vs random search without early stopping.

Both methods tune the same micro problem (a simulated Model II dataset at 32 px, one micro
family's search space with a longer epoch budget) with the same number of configurations,
for each of several seeds, through the project's own hooks
(``tuner.search.build_tuner(..., sampler=..., early_stopping=...)``, i.e. ``make_searcher``
and ``make_scheduler``). Measured per method and seed: the best validation macro AUC any
trial reached at any epoch, and the total number of training epochs spent by all trials.

The trainable is the study's training loop (``tuner.training.loop``: AdamW, warmup/cosine,
augmentation, the same metrics) reporting ``val_auc_macro`` every epoch, without MLflow
logging or checkpoints: those cost wall time but change neither the search nor the scores.

    .venv/bin/python bench/search_efficiency.py --out bench/results/search_efficiency.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

METHODS = (("asha_tpe", "tpe", True), ("random_fifo", "random", False))


def train_config(config: dict[str, Any], *, data: dict[str, Any], family: str, img_size: int,
                 max_epochs: int, seed: int, class_names: list[str]) -> None:
    """Ray Tune function trainable: train one sampled config, report ``val_auc_macro`` per epoch."""
    import ray
    import torch
    from ray import tune

    from tuner import metrics as M
    from tuner.search_space import TrainHParams
    from tuner.training import loop
    from tuner.training.checkpoint import build_model_from_config

    torch.set_num_threads(1)
    arrays = {k: (ray.get(v) if isinstance(v, ray.ObjectRef) else v) for k, v in data.items()}
    x_train = torch.from_numpy(np.array(arrays["train_images"]))
    y_train = torch.from_numpy(np.array(arrays["train_labels"]))
    x_val, y_val = torch.from_numpy(np.array(arrays["val_images"])), np.asarray(arrays["val_labels"])
    hp = TrainHParams(**config["train"])
    torch.manual_seed(seed)
    model = build_model_from_config({"family": family, "img_size": img_size,
                                     "class_names": class_names, "model": config["model"]})
    optimizer = loop.make_optimizer(model, hp)
    steps = loop.steps_per_epoch(len(y_train), int(hp.batch_size))
    scheduler = loop.make_scheduler(optimizer, hp, steps_per_epoch=steps, max_epochs=max_epochs)
    device = torch.device("cpu")
    for epoch in range(1, max_epochs + 1):
        loop.train_one_epoch(
            model, x_train, y_train, optimizer=optimizer, scheduler=scheduler, hp=hp,
            device=device, img_size=img_size,
            generator=torch.Generator().manual_seed(seed * 100003 + epoch),
            aug_generator=torch.Generator().manual_seed(seed * 100019 + epoch))
        probs = loop.predict_proba(model, x_val, device=device, img_size=img_size)
        report = M.classification_report(probs, y_val, class_names)
        tune.report({"val_auc_macro": report["auc_macro"], "epoch": epoch})


def run_method(name: str, sampler: str, early_stopping: bool, *, seed: int, refs: dict, space,
               args, class_names: list[str], storage: Path) -> dict[str, Any]:
    """One study; returns best val AUC, total epochs, per-trial epochs and wall seconds."""
    from ray import tune

    from tuner.search import build_tuner

    trainable = tune.with_parameters(
        train_config, data=refs, family=args.family, img_size=space.img_size or 32,
        max_epochs=args.max_epochs, seed=seed, class_names=class_names)
    tuner = build_tuner(
        trainable, space.param_space(), name=f"{name}-s{seed}", storage_path=str(storage),
        num_samples=args.configs, max_epochs=args.max_epochs, grace_period=args.grace_period,
        reduction_factor=args.reduction_factor, seed=seed, max_concurrent=args.max_concurrent,
        cpus_per_trial=1, gpus_per_trial=0, sampler=sampler, early_stopping=early_stopping,
        verbose=0)
    start = time.perf_counter()
    results = tuner.fit()
    seconds = time.perf_counter() - start
    epochs, best = [], float("nan")
    for result in results:
        df = result.metrics_dataframe
        if result.error is not None or df is None or "val_auc_macro" not in df:
            raise RuntimeError(f"{name} seed {seed}: a trial failed: {result.error}")
        epochs.append(int(df["training_iteration"].max()))
        score = float(df["val_auc_macro"].max())
        best = score if not best == best else max(best, score)
    return {"method": name, "seed": seed, "best_auc": best, "epochs": sum(epochs),
            "trial_epochs": sorted(epochs, reverse=True), "seconds": seconds}


def machine() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines()
                  if ln.startswith("Model name")), "?")
    return f"{model}, {os.cpu_count()} cores (shared with other work)"


def render(rows: list[dict], args, argv: list[str], n_train: int, n_val: int, load: tuple,
           wall: float) -> str:
    by = {name: [r for r in rows if r["method"] == name] for name, _, _ in METHODS}
    lines = [
        "# Search efficiency: ASHA + TPE vs random search without early stopping", "",
        f"Command: `.venv/bin/python bench/search_efficiency.py {' '.join(argv)}`",
        f"Machine: {machine()}, Python {platform.python_version()}; date {date.today()}; "
        f"load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min); "
        f"whole benchmark {wall / 60:.1f} min.",
        f"Problem: simulated `model_ii` at 32 px, {args.n_per_class} images per class "
        f"({n_train} train, {n_val} val), family `{args.family}` micro search space, "
        f"max {args.max_epochs} epochs per configuration, {args.configs} configurations per "
        f"study, {args.max_concurrent} trials at a time, 1 thread each.",
        f"ASHA: grace period {args.grace_period} epoch, reduction factor {args.reduction_factor} "
        "(on `val_auc_macro`); random search runs every configuration to the full budget (FIFO).",
        "Best AUC = the highest validation macro AUC any trial reported at any epoch.", "",
        "| method | seed | best val AUC | total epochs | epochs per trial | wall s |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['method']} | {r['seed']} | {r['best_auc']:.4f} | {r['epochs']} | "
                     f"{' '.join(map(str, r['trial_epochs']))} | {r['seconds']:.0f} |")
    mean = {k: (statistics.mean(r["best_auc"] for r in v), statistics.mean(r["epochs"] for r in v))
            for k, v in by.items()}
    (a_auc, a_ep), (r_auc, r_ep) = mean["asha_tpe"], mean["random_fifo"]
    gaps = [a["best_auc"] - r["best_auc"] for a, r in zip(by["asha_tpe"], by["random_fifo"])]
    ratios = [a["epochs"] / r["epochs"] for a, r in zip(by["asha_tpe"], by["random_fifo"])]
    met = (a_auc >= r_auc - 0.005) and (a_ep / r_ep <= 0.25)
    lines += [
        "", "| method | mean best val AUC | mean total epochs |", "|---|---:|---:|",
        f"| asha_tpe | {a_auc:.4f} | {a_ep:.1f} |", f"| random_fifo | {r_auc:.4f} | {r_ep:.1f} |",
        "",
        f"AUC difference ASHA+TPE - random (mean): {a_auc - r_auc:+.4f} "
        f"(per seed: {', '.join(f'{g:+.4f}' for g in gaps)}).",
        f"Epoch ratio ASHA+TPE / random (means): {a_ep / r_ep:.3f} "
        f"(per seed: {', '.join(f'{q:.3f}' for q in ratios)}).",
        f"Target (within 0.005 AUC using <= 1/4 of the epochs): {'met' if met else 'not met'} "
        "on the means.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="levit")
    p.add_argument("--n-per-class", type=int, default=600)
    p.add_argument("--configs", type=int, default=12, help="configurations per study")
    p.add_argument("--max-epochs", type=int, default=16)
    p.add_argument("--grace-period", type=int, default=1)
    p.add_argument("--reduction-factor", type=float, default=2)
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data-dir", type=Path, default=Path("runs/bench/data"))
    p.add_argument("--out", type=Path, help="write the markdown results here")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local, throwaway Ray
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    load = os.getloadavg()
    begin = time.perf_counter()

    import ray

    from tuner.data import ensure_simulated
    from tuner.search_space import load_search_space
    from tuner.study import load_arrays

    root = ensure_simulated(args.data_dir / f"model_ii-32px-n{args.n_per_class}-s0", "model_ii",
                            args.n_per_class, seed=0, img_size=32)
    arrays, meta = load_arrays(root)
    space = load_search_space(args.family, "micro")
    tmp = Path(tempfile.mkdtemp(prefix="ltse", dir="/tmp"))
    ray.init(num_cpus=args.max_concurrent, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(tmp / "ray"))
    rows = []
    try:
        refs = {k: ray.put(v) for k, v in arrays.items()}
        for seed in args.seeds:
            for name, sampler, early in METHODS:
                row = run_method(name, sampler, early, seed=seed, refs=refs, space=space, args=args,
                                 class_names=list(meta.class_names), storage=tmp / "studies")
                rows.append(row)
                print(f"{name:<12} seed {seed}: best val AUC {row['best_auc']:.4f}, "
                      f"{row['epochs']} epochs, {row['seconds']:.0f} s", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)  # Ray session, studies, MLflow store of this run
    text = render(rows, args, argv, len(arrays["train_labels"]), len(arrays["val_labels"]), load,
                  time.perf_counter() - begin)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
