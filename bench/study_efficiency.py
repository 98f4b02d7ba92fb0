"""How busy a study keeps its trial slots: a micro study of two families, eight trials each, on
this machine's local Ray (the study's own code: ``tuner.study.driver.run_study``), then two figures.

1. Slot use: the seconds the trials spent in training steps (each epoch's ``epoch_seconds``,
   timed inside the trial's training loop) over (the tuning phase's wall time x trial slots).
   The tuning phase runs from the first trial's start to the last trial's end; the study's
   whole wall time (Ray start, dataset load, leaderboard) is reported beside it.
2. A trial's wall time (its MLflow run, from the trial's start to its end: data from the object
   store, model build, every epoch with validation, metrics, checkpoints and plots) against a
   bare train + validate loop over the same epochs, measured here in the same run on the same
   configuration, data and thread count (plain AdamW steps with the same augmentation, one
   forward pass over the validation split per epoch; no Ray, no MLflow, no checkpoints). Only
   trials that trained every epoch are compared.

    .venv/bin/python bench/study_efficiency.py --out bench/results/study_efficiency.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe as machine  # noqa: E402  (bench/ is not a package)


def bare_train_validate(resolved: dict, images, labels, val_images, epochs: int) -> float:
    """Wall seconds of ``epochs`` epochs of plain AdamW steps (the trial's augmentation, no
    schedule, no smoothing) and one no-grad pass over the validation images per epoch."""
    from tuner.models import io
    from tuner.training.loop import augment

    hp = SimpleNamespace(**resolved["train"])
    bs = int(hp.batch_size)
    torch.manual_seed(0)
    start = time.perf_counter()
    model = io.build_network(io.ModelConfig.from_checkpoint_config(resolved)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=float(hp.lr))
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(labels), generator=gen)
        for i in range(max(len(labels) // bs, 1)):
            idx = order[i * bs:(i + 1) * bs]
            loss = F.cross_entropy(model(augment(images[idx], hp, gen)), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for i in range(0, len(val_images), 256):
                model(val_images[i:i + 256])
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default="levit,cvt")
    p.add_argument("--samples", type=int, default=8, help="trials per family")
    p.add_argument("--n-per-class", type=int, default=3000,
                   help="images per class of the simulated train split (32 px)")
    p.add_argument("--max-epochs", type=int, default=None, help="default: the micro budget")
    p.add_argument("--bare-trials", type=int, default=6, help="completed trials re-run bare")
    p.add_argument("--data-dir", type=Path, default=Path("runs/bench/data"))
    p.add_argument("--out", type=Path, help="write the markdown results here")
    args = p.parse_args(argv)
    for key, value in (("RAY_USAGE_STATS_ENABLED", "0"), ("RAY_AUTH_MODE", "disabled"),
                       ("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")):
        os.environ.setdefault(key, value)  # a local, throwaway Ray
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("LENSTUNE_STORAGE", None)
    load_start = os.getloadavg()
    import ray
    from mlflow.tracking import MlflowClient

    from tuner.tracking import writer as tracking
    from tuner.study.config import resolve_study_config
    from tuner.data import ensure_simulated
    from tuner.study.driver import load_arrays, run_study

    root = ensure_simulated(args.data_dir / f"model_ii-32px-n{args.n_per_class}-s0", "model_ii",
                            args.n_per_class, seed=0, img_size=32)
    tmp = Path(tempfile.mkdtemp(prefix="ltse", dir="/tmp"))
    families = args.families.split(",")
    config = resolve_study_config({
        "families": families, "profile": "micro", "data": root, "samples": args.samples,
        "max_epochs": args.max_epochs, "runs_dir": tmp / "runs", "experiment": "bench",
        "study_name": "efficiency", "promote": False})
    try:
        start = time.perf_counter()
        result = run_study(config)
        study_wall = time.perf_counter() - start
        ray.shutdown()
        client = MlflowClient(result.tracking_uri)
        runs = [r for r in tracking.list_trial_runs(client, result.experiment_id,
                                                    result.parent_run_id)]
        study = client.get_run(result.parent_run_id)
        slots = max(int(study.data.params[f"resources.{f}.max_concurrent"]) for f in families)
        first = min(r.info.start_time for r in runs) / 1000
        last = max(r.info.end_time for r in runs) / 1000
        phase = last - first
        train_s = sum(m.value for r in runs
                      for m in client.get_metric_history(r.info.run_id, "epoch_seconds"))
        slot_use = train_s / (phase * slots)
        # Where the rest went: slot time no trial held, and trial time outside training steps.
        held = sum((r.info.end_time - r.info.start_time) / 1000 for r in runs)

        arrays, _ = load_arrays(root)
        torch.set_num_threads(1)
        images, labels = torch.from_numpy(arrays["train_images"]), torch.from_numpy(arrays["train_labels"])
        val_images = torch.from_numpy(arrays["val_images"])
        completed = [r for r in runs if r.data.tags.get("stop_reason") == "completed"]
        rows = []
        for run in completed[:args.bare_trials]:
            folder = client.download_artifacts(run.info.run_id, "config.json", str(tmp / run.info.run_id))
            resolved = json.loads(Path(folder).read_text())
            epochs = int(run.data.metrics["epoch"])
            trial_wall = (run.info.end_time - run.info.start_time) / 1000
            bare = bare_train_validate(resolved, images, labels, val_images, epochs)
            rows.append((run.data.tags["family"], run.data.tags["trial_id"], epochs, trial_wall,
                         bare, bare / trial_wall))
            print(f"{rows[-1][0]} {rows[-1][1]}: trial {trial_wall:.1f} s, bare {bare:.1f} s, "
                  f"ratio {rows[-1][5]:.3f}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_end = os.getloadavg()
    ratio = statistics.median(r[5] for r in rows) if rows else float("nan")
    table = "\n".join(f"| {f} | {t} | {e} | {w:.1f} | {b:.1f} | {q:.3f} |" for f, t, e, w, b, q in rows)
    verdict_slots = "met" if slot_use >= 0.80 else f"not met, short by {0.80 - slot_use:.3f}"
    verdict_trial = "met" if ratio >= 0.90 else f"not met, short by {0.90 - ratio:.3f}"
    text = f"""# Study efficiency: how busy a study keeps its trial slots

Command: `.venv/bin/python bench/study_efficiency.py {' '.join(argv)}`
Machine: {machine()}; date {date.today()}.
Load average (1/5/15 min): {load_start[0]:.2f} / {load_start[1]:.2f} / {load_start[2]:.2f} at start, {load_end[0]:.2f} / {load_end[1]:.2f} / {load_end[2]:.2f} at the end.
Study: families {', '.join(families)} side by side (micro profile), {args.samples} trials each,
{len(labels)} train and {len(val_images)} validation images at 32 px (simulated `model_ii`),
local Ray on this machine: {slots} trial slots (1 CPU each), embedded MLflow, {len(runs)} trials
({len(completed)} trained every epoch, the rest stopped by ASHA).

| figure | value | target |
|---|---:|---|
| training-step seconds / (tuning-phase wall x slots) | **{slot_use:.3f}** ({train_s:.1f} s / ({phase:.1f} s x {slots})) | >= 0.80: {verdict_slots} |
| bare train + validate / trial wall, median of {len(rows)} completed trials | **{ratio:.3f}** | >= 0.90: {verdict_trial} |

The whole study took {study_wall:.1f} s (Ray start, dataset load, MLflow runs, leaderboard
included); its tuning phase, first trial start to last trial end, {phase:.1f} s.
Of the {phase * slots:.1f} slot-seconds of the tuning phase, trials held {held:.1f}
({held / (phase * slots):.3f}; the rest is slots without a trial: between trials and while the
last trials ran alone), and spent {train_s:.1f} of them in training steps
({train_s / held:.3f} of their time; the rest is validation, checkpoints, start and end).

| family | trial | epochs | trial wall s | bare s | bare / trial |
|---|---|---:|---:|---:|---:|
{table}
"""
    print(text)
    if args.out:
        tmp_out = args.out.with_suffix(".tmp")
        tmp_out.write_text(text)
        tmp_out.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
