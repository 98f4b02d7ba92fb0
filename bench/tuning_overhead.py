"""Overhead of the tuning service: a trial's training throughput (images/s, measured inside
the Ray Tune trial with MLflow logging and checkpoints on) vs a bare PyTorch loop (AdamW, no
augmentation, no Ray, no MLflow) on the same model, data and thread count, in one run.

The two alternate in rounds (bare then trial, then trial then bare, ...) so that a change of
the machine's load during the run weighs on both alike. Each block trains a fresh model for
``--epochs`` epochs; its first epoch (allocations, warm-up) is left out. Each round gives a
paired ratio (median trial images/s over median bare images/s of that round); the headline is
the median of the rounds' ratios, which cancels slow load drift. The ratio of the pooled
medians is reported beside it.

    .venv/bin/python bench/tuning_overhead.py --out bench/results/tuning_overhead.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe as machine  # noqa: E402  (bench/ is not a package)


def bare_loop(model, images, labels, batch_size: int, epochs: int) -> list[float]:
    """Images/s of each epoch of plain forward/backward/AdamW steps over shuffled batches."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rates = []
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
        rates.append(seen / (time.perf_counter() - start))
    return rates


def trial_block(train_trial, refs: dict, config: dict, ctx, storage: Path
                ) -> tuple[list[float], float, float]:
    """One Ray Tune trial (the study's own trainable): per-epoch images/s it reported, the
    wall seconds of the whole trial (Ray start of the trial, validation, logging included) and
    the CPU seconds the driver (Tune's controller loop) used meanwhile."""
    from ray import tune

    tuner = tune.Tuner(tune.with_parameters(train_trial, data=refs, context=ctx.model_dump()),
                       param_space=config,
                       run_config=tune.RunConfig(storage_path=str(storage), verbose=0))
    start, cpu = time.perf_counter(), time.process_time()
    result = tuner.fit()[0]
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    if result.error is not None:
        raise RuntimeError(f"the trial failed: {result.error}")
    return [float(v) for v in result.metrics_dataframe["images_per_second"]], wall, cpu


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="vit")
    p.add_argument("--epochs", type=int, default=3, help="epochs per block (the first is warm-up)")
    p.add_argument("--rounds", type=int, default=6, help="bare/trial pairs, alternating order")
    p.add_argument("--n-per-class", type=int, default=8000)
    p.add_argument("--data-dir", type=Path, default=Path("runs/bench/data"))
    p.add_argument("--out", type=Path, help="write the markdown results here")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error(f"--epochs must be >= 2 (the first epoch of a block is warm-up), got {args.epochs}")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local, throwaway Ray
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    load_start = os.getloadavg()
    import ray
    from mlflow.tracking import MlflowClient

    from tuner.tracking import writer as tracking
    from tuner.data import ensure_simulated
    from tuner.study.search_space import load_search_space
    from tuner.study.driver import load_arrays
    from tuner.models import io
    from tuner.training.trainable import TrialContext, train_trial

    root = ensure_simulated(args.data_dir / f"model_ii-32px-n{args.n_per_class}-s0", "model_ii",
                            args.n_per_class, seed=0, img_size=32)
    arrays, meta = load_arrays(root)
    config = load_search_space(args.family, "micro").sample(0)
    config["train"].update(aug_rotation=False, aug_flip=False)  # the bare loop does none either
    bs = int(config["train"]["batch_size"])
    resolved = {"family": args.family, "img_size": 32, "class_names": list(meta.class_names),
                "model": config["model"]}
    images, labels = torch.from_numpy(arrays["train_images"]), torch.from_numpy(arrays["train_labels"])
    torch.set_num_threads(1)

    tmp = Path(tempfile.mkdtemp(prefix="ltov", dir="/tmp"))
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = tracking.ensure_experiment(client, "bench", str(tmp / "artifacts"))
    info = tracking.DatasetInfo(root.name, meta.digest, str(root), "model_ii")
    parent = tracking.start_study_run(client, exp, "bench", {}, info)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, _temp_dir=str(tmp / "ray"))
    refs = {k: ray.put(v) for k, v in arrays.items()}
    bare_rates, trial_rates, pair_ratios, trial_walls, bare_walls, driver_cpu = [], [], [], [], [], []
    try:
        for r in range(args.rounds):
            ctx = TrialContext(
                family=args.family, img_size=32, class_names=list(meta.class_names),
                max_epochs=args.epochs, seed=0, cpus_per_trial=1, study_name=f"bench-{r}",
                tracking_uri=uri, experiment_id=exp, parent_run_id=parent, dataset_name=root.name,
                dataset_digest=meta.digest, dataset_source=str(root), dataset_preset="model_ii",
                outbox_dir=str(tmp / "outbox" / f"bench-{r}"))
            block = {}
            for kind in (("bare", "trial") if r % 2 == 0 else ("trial", "bare")):
                if kind == "bare":
                    torch.manual_seed(0)
                    start = time.perf_counter()
                    network = io.build_network(io.ModelConfig.from_checkpoint_config(resolved))
                    block["bare"] = bare_loop(network.train(), images, labels, bs, args.epochs)
                    bare_walls.append(time.perf_counter() - start)
                else:
                    block["trial"], wall, cpu = trial_block(train_trial, refs, config, ctx,
                                                            tmp / "studies")
                    trial_walls.append(wall)
                    driver_cpu.append(cpu)
            b, t = block["bare"][1:], block["trial"][1:]
            bare_rates += b
            trial_rates += t
            pair_ratios.append(statistics.median(t) / statistics.median(b))
            print(f"round {r}: bare {[round(v) for v in b]} trial {[round(v) for v in t]} img/s, "
                  f"ratio {pair_ratios[-1]:.3f}", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)  # Ray session, studies, MLflow store of this run
    load_end = os.getloadavg()
    bare, trial = statistics.median(bare_rates), statistics.median(trial_rates)
    ratio = statistics.median(pair_ratios)
    n_train = len(labels)
    text = f"""# Tuning overhead: trial training throughput vs a bare PyTorch loop

Command: `.venv/bin/python bench/tuning_overhead.py {' '.join(argv)}`
Machine: {machine()}, shared with other work; date {date.today()}.
Load average (1/5/15 min): {load_start[0]:.2f} / {load_start[1]:.2f} / {load_start[2]:.2f} at start, {load_end[0]:.2f} / {load_end[1]:.2f} / {load_end[2]:.2f} at the end.
Model: `{args.family}` micro profile, sampled config (seed 0), 32 px, batch {bs}, 1 thread, augmentation off in both.
Data: simulated `model_ii` at 32 px, {n_train} train images per epoch (epochs of {n_train / bare:.1f} s bare).
{args.rounds} rounds, each a bare block and a trial block of {args.epochs} epochs (order alternating); the
first epoch of each block is left out, leaving {len(bare_rates)} epochs of each.
The trial's images/s is the `images_per_second` it logs (its training loop, timed inside the trial).

| loop | median images/s | per-epoch images/s |
|---|---:|---|
| bare PyTorch (AdamW, no Ray, no MLflow) | {bare:.1f} | {', '.join(f'{v:.0f}' for v in bare_rates)} |
| lenstune trial (Ray Tune function trainable, object-store data, MLflow on) | {trial:.1f} | {', '.join(f'{v:.0f}' for v in trial_rates)} |
| **ratio trial / bare, median of rounds** | **{ratio:.3f}** (target >= 0.95) | per round: {', '.join(f'{v:.3f}' for v in pair_ratios)} |
| ratio of the pooled medians | {trial / bare:.3f} | |

Whole blocks, wall clock: bare {statistics.mean(bare_walls):.1f} s per {args.epochs} epochs; trial
{statistics.mean(trial_walls):.1f} s (its worker start, per-epoch validation, MLflow logging, best-epoch
plots and checkpoints included, which the bare loop does not do). Meanwhile the driver process
(Tune's controller loop) used {statistics.mean(driver_cpu):.1f} CPU s per trial, on the same cores.
"""
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
