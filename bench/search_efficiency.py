"""Search efficiency: Optuna TPE + ASHA vs random search without early stopping.

Both methods tune the same micro problem (a simulated Model II dataset at 32 px, one micro
family's search space with a longer epoch budget) with the same number of configurations,
for each of several seeds, through the project's own hooks
(``tuner.study.search.build_tuner(..., sampler=..., early_stopping=...)``, i.e. ``make_searcher``
and ``make_scheduler``). Measured per method and seed: the best validation macro AUC any
trial reached at any epoch, and the total number of training epochs spent by all trials.

The trainable is the study's training loop (``tuner.training.loop``: AdamW, warmup/cosine,
augmentation, the same metrics) reporting ``val_auc_macro`` every epoch, without MLflow
logging or checkpoints: those cost wall time but change neither the search nor the scores.

    .venv/bin/python bench/search_efficiency.py --out bench/results/search_efficiency.md
    # several runs (other seeds) summarised together from their saved curves:
    .venv/bin/python bench/search_efficiency.py --pool run1.json.gz run2.json.gz
"""

from __future__ import annotations

import argparse
import gzip
import json
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

# name, sampler, ASHA rule (None: no early stopping). asha_tpe is what ``lenstune tune`` runs;
# asha_ray_tpe uses Ray's own percentile rule at the rungs, for comparison.
METHODS = (("asha_tpe", "tpe", "rank"), ("asha_ray_tpe", "tpe", "percentile"),
           ("random_fifo", "random", None))


def train_config(config: dict[str, Any], *, data: dict[str, Any], family: str, img_size: int,
                 max_epochs: int, seed: int, class_names: list[str]) -> None:
    """Ray Tune function trainable: train one sampled config, report ``val_auc_macro`` per epoch."""
    import ray
    import torch
    from ray import tune

    from tuner import metrics as M
    from tuner.study.search_space import TrainHParams
    from tuner.training import loop
    from tuner.models import io

    torch.set_num_threads(1)
    arrays = {k: (ray.get(v) if isinstance(v, ray.ObjectRef) else v) for k, v in data.items()}
    x_train = torch.from_numpy(np.array(arrays["train_images"]))
    y_train = torch.from_numpy(np.array(arrays["train_labels"]))
    x_val, y_val = torch.from_numpy(np.array(arrays["val_images"])), np.asarray(arrays["val_labels"])
    hp = TrainHParams(**config["train"])
    torch.manual_seed(seed)
    model = io.build_network(io.ModelConfig(family=family, img_size=img_size,
                                             class_names=class_names, model=config["model"])).train()
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
        probs = io.predict_probs(model, x_val, img_size, device=device)
        report = M.classification_report(probs, y_val, class_names)
        tune.report({"val_auc_macro": report["auc_macro"], "epoch": epoch})


def run_method(name: str, sampler: str, rule: str | None, *, seed: int, refs: dict, space,
               args, class_names: list[str], storage: Path) -> dict[str, Any]:
    """One study; returns best val AUC, total epochs, per-trial epochs and wall seconds."""
    from ray import tune

    from tuner.study.search import build_tuner

    trainable = tune.with_parameters(
        train_config, data=refs, family=args.family, img_size=space.img_size or 32,
        max_epochs=args.max_epochs, seed=seed, class_names=class_names)
    tuner = build_tuner(
        trainable, space.param_space(), name=f"{name}-s{seed}", storage_path=str(storage),
        num_samples=args.configs, max_epochs=args.max_epochs, grace_period=args.grace_period,
        reduction_factor=args.reduction_factor, seed=seed, max_concurrent=args.max_concurrent,
        cpus_per_trial=1, gpus_per_trial=0, sampler=sampler, early_stopping=rule is not None,
        asha_rule=rule or "rank", verbose=0,
        tell_epoch=args.grace_period if args.tpe_told == "first-rung" and sampler == "tpe" else None)
    start = time.perf_counter()
    results = tuner.fit()
    seconds = time.perf_counter() - start
    epochs, best, curves = [], float("nan"), []
    for result in results:
        df = result.metrics_dataframe
        if result.error is not None or df is None or "val_auc_macro" not in df:
            raise RuntimeError(f"{name} seed {seed}: a trial failed: {result.error}")
        epochs.append(int(df["training_iteration"].max()))
        score = float(df["val_auc_macro"].max())
        best = score if not best == best else max(best, score)
        curves.append({"config": result.config, "val_auc": [float(v) for v in df["val_auc_macro"]]})
    return {"method": name, "seed": seed, "best_auc": best, "epochs": sum(epochs),
            "trial_epochs": sorted(epochs, reverse=True), "seconds": seconds, "curves": curves}


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) standard error of an ROC AUC from n_pos positives, n_neg negatives."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc))
    return (var / (n_pos * n_neg)) ** 0.5


def auc_noise_line(n_val: int, auc: float = 0.93) -> str:
    per_class = n_val // 3
    se = auc_standard_error(auc, per_class, n_val - per_class)
    return (f"Validation noise: a one-vs-rest AUC of {auc} on {per_class} positives and "
            f"{n_val - per_class} negatives has a standard error of {se:.4f} (Hanley & McNeil "
            "1982); the macro AUC averages three such, correlated.\n")


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(x):
        x = np.asarray(x, dtype=float)
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=float)
        for value in np.unique(x):
            r[x == value] = r[x == value].mean()
        return r
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def rung_correlations(rows: list[dict], epochs: list[int]) -> str:
    """How well a configuration's AUC after e epochs predicts its best AUC, from the full
    learning curves of random search (Spearman over its configurations, per seed)."""
    parts = []
    for e in epochs:
        values = [spearman([c["val_auc"][e - 1] for c in r["curves"]],
                           [max(c["val_auc"]) for c in r["curves"]])
                  for r in rows if r["method"] == "random_fifo"]
        parts.append(f"after {e} epoch{'s' * (e > 1)}: {', '.join(f'{v:+.2f}' for v in values)}")
    return ("Rank correlation (Spearman, per seed) between a configuration's val AUC after a rung's "
            "epochs and its best val AUC, from random search's full curves: " + "; ".join(parts)
            + ".")


def machine() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in lscpu.splitlines()
                  if ln.startswith("Model name")), "?")
    return f"{model}, {os.cpu_count()} cores (shared with other work)"


def render(rows: list[dict], args, argv: list[str], n_train: int, n_val: int, load: tuple,
           wall: float) -> str:
    told = "score at the first rung" if args.tpe_told == "first-rung" else "last score"
    lines = [
        "# Search efficiency: ASHA + TPE vs random search without early stopping", "",
        f"Command: `.venv/bin/python bench/search_efficiency.py {' '.join(argv)}`",
        f"Machine: {machine()}, Python {platform.python_version()}; date {date.today()}; "
        f"load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min); "
        f"whole benchmark {wall / 60:.1f} min.",
        f"Problem: simulated `model_ii` at 32 px, {args.n_per_class} training and "
        f"{args.val_per_class} validation images per class ({n_train} train, {n_val} val), family `{args.family}` micro search space, "
        f"max {args.max_epochs} epochs per configuration, {args.configs} configurations per "
        f"study, {args.max_concurrent} trials at a time, 1 thread each.",
        f"ASHA: grace period {args.grace_period} epoch, reduction factor {args.reduction_factor} "
        "(on `val_auc_macro`); `asha_tpe` applies the rank rule at the rungs (`tuner/study/asha.py`, "
        "what `lenstune tune` runs), `asha_ray_tpe` Ray's percentile rule; both sample with "
        f"seeded Optuna TPE, told each trial's {told}. `random_fifo` samples at random and runs every configuration to the "
        "full budget.",
        "Best AUC = the highest validation macro AUC any trial reported at any epoch.", "",
        auc_noise_line(n_val),
        "| method | seed | best val AUC | total epochs | epochs per trial | wall s |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['method']} | {r['seed']} | {r['best_auc']:.4f} | {r['epochs']} | "
                     f"{' '.join(map(str, r['trial_epochs']))} | {r['seconds']:.0f} |")
    lines += ["", *summary_table(rows)]
    rung_epochs, e = [], args.grace_period
    while e < args.max_epochs:
        rung_epochs.append(int(e))
        e *= args.reduction_factor
    lines.append(rung_correlations(rows, rung_epochs))
    return "\n".join(lines) + "\n"


def summary_table(rows: list[dict]) -> list[str]:
    """Means over the seeds per method, each against random search on the same seeds, and
    whether the target holds."""
    by = {name: sorted((r for r in rows if r["method"] == name), key=lambda r: r["seed"])
          for name, _, _ in METHODS}
    by = {name: runs for name, runs in by.items() if runs}
    mean = {k: (statistics.mean(r["best_auc"] for r in v), statistics.mean(r["epochs"] for r in v))
            for k, v in by.items()}
    r_auc, r_ep = mean["random_fifo"]
    lines = ["| method | mean best val AUC | mean total epochs | AUC - random (per seed) "
              "| epochs / random (per seed) | target |", "|---|---:|---:|---|---|---|"]
    for name, (auc, ep) in mean.items():
        if name == "random_fifo":
            lines.append(f"| {name} | {auc:.4f} | {ep:.1f} | | | |")
            continue
        ref = {r["seed"]: r for r in by["random_fifo"]}
        gaps = [a["best_auc"] - ref[a["seed"]]["best_auc"] for a in by[name]]
        ratios = [a["epochs"] / ref[a["seed"]]["epochs"] for a in by[name]]
        met = (auc >= r_auc - 0.005) and (ep / r_ep <= 0.25)
        lines.append(
            f"| {name} | {auc:.4f} | {ep:.1f} | {auc - r_auc:+.4f} "
            f"({', '.join(f'{g:+.4f}' for g in gaps)}) | {ep / r_ep:.3f} "
            f"({', '.join(f'{q:.3f}' for q in ratios)}) | {'met' if met else 'not met'} |")
    return lines + ["", "Target: mean best val AUC within 0.005 of random search's, using <= "
                    "1/4 of its epochs (means over the seeds).", ""]


def rows_from_curves(paths: list[Path]) -> list[dict]:
    """Per method and seed, best val AUC and total epochs from saved ``--curves`` files (every
    trial's per-epoch val AUC); a seed measured twice for a method is refused."""
    rows, seen = [], set()
    for path in paths:
        text = gzip.open(path, "rt").read() if path.suffix == ".gz" else path.read_text()
        for entry in json.loads(text):
            key = (entry["method"], entry["seed"])
            if key in seen:
                raise SystemExit(f"{path}: {key[0]} seed {key[1]} is in more than one file")
            seen.add(key)
            rows.append({"method": key[0], "seed": key[1],
                         "best_auc": max(max(c["val_auc"]) for c in entry["curves"]),
                         "epochs": sum(len(c["val_auc"]) for c in entry["curves"])})
    missing = {r["seed"] for r in rows} ^ {r["seed"] for r in rows if r["method"] == "random_fifo"}
    if missing:
        raise SystemExit(f"no random_fifo run for seeds {sorted(missing)}: nothing to compare with")
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="levit")
    p.add_argument("--n-per-class", type=int, default=1500,
                   help="training images per class")
    p.add_argument("--val-per-class", type=int, default=500,
                   help="validation images per class (the AUC's noise shrinks with it)")
    p.add_argument("--configs", type=int, default=24, help="configurations per study")
    p.add_argument("--max-epochs", type=int, default=16)
    p.add_argument("--grace-period", type=int, default=1)
    p.add_argument("--reduction-factor", type=float, default=4)
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--tpe-told", choices=["last", "first-rung"], default="first-rung",
                   help="what TPE is told of a trial: its last score (Ray's default) or its "
                   "score at the first rung (tuner.study.asha.EqualFidelityOptunaSearch)")
    p.add_argument("--methods", nargs="+", default=[m[0] for m in METHODS],
                   choices=[m[0] for m in METHODS], help="run only these (curves for analysis)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    p.add_argument("--data-dir", type=Path, default=Path("runs/bench/data"))
    p.add_argument("--out", type=Path, help="write the markdown results here")
    p.add_argument("--curves", type=Path,
                   help="write every trial's config and per-epoch val AUC here (JSON)")
    p.add_argument("--pool", type=Path, nargs="+", metavar="CURVES",
                   help="run nothing: the summary over the seeds of these saved --curves files "
                   "(.json or .json.gz)")
    args = p.parse_args(argv)
    if args.pool:
        text = "\n".join([f"Command: `.venv/bin/python bench/search_efficiency.py {' '.join(argv)}`",
                          "", *summary_table(rows_from_curves(args.pool))])
        print(text)
        if args.out:
            args.out.write_text(text)
        return 0
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local, throwaway Ray
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    load = os.getloadavg()
    begin = time.perf_counter()

    import ray

    from tuner.data.simulate import simulate_dataset, split_counts
    from tuner.study.search_space import load_search_space
    from tuner.study.driver import load_arrays

    root = args.data_dir / f"model_ii-32px-tr{args.n_per_class}-va{args.val_per_class}-s0"
    if not (root / "meta.json").exists():
        counts = split_counts(0, counts=[args.n_per_class, args.val_per_class, 1])
        simulate_dataset(root, "model_ii", counts, seed=0, img_size=32, progress=True)
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
                if name not in args.methods:
                    continue
                row = run_method(name, sampler, early, seed=seed, refs=refs, space=space, args=args,
                                 class_names=list(meta.class_names), storage=tmp / "studies")
                rows.append(row)
                print(f"{name:<12} seed {seed}: best val AUC {row['best_auc']:.4f}, "
                      f"{row['epochs']} epochs, {row['seconds']:.0f} s", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)  # Ray session, studies, MLflow store of this run
    if "random_fifo" not in args.methods:
        if args.curves:
            args.curves.write_text(json.dumps(
                [{k: r[k] for k in ("method", "seed", "curves")} for r in rows], indent=1))
        return 0
    text = render(rows, args, argv, len(arrays["train_labels"]), len(arrays["val_labels"]), load,
                  time.perf_counter() - begin)
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.curves:
        args.curves.write_text(json.dumps(
            [{k: r[k] for k in ("method", "seed", "curves")} for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
