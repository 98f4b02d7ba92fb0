"""The documented results: every family tuned at the micro scale on this machine, as a user
runs it, then each family's best trial measured on the held-out test split and on its shift
suite; the table goes to docs/results.md beside the best published DeepLense figures.

    .venv/bin/python bench/campaign.py --out docs/results.md

Steps: simulate the dataset once (``tuner.data.ensure_simulated``); one study of every family
side by side (``python tuner/run.py --family all --profile micro ...``, a subprocess, the command
a user types); for each family the best trial that completed its budget (by validation macro
AUC, as promotion picks): its test macro AUC and accuracy (``tuner.registry.evaluation``), its
macro AUC on every shift of the test split (``tuner.robustness.evaluate.evaluate_shifts``), its
parameters, and its training throughput (median ``images_per_second`` over its epochs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe as machine  # noqa: E402  (bench/ is not a package)

# Best published DeepLense figures (macro one-vs-rest AUC on the test set), as the DeepLense
# GSoC projects report them: GPUs, 30,000 training and 5,000 test images per class,
# full-size (often ImageNet-pretrained) models. Not comparable with a CPU micro study.
PUBLISHED = {
    "model_i": [("CoAtNet-nano", 0.9955), ("EfficientFormer-L3", 0.9948),
                ("EfficientNet-B2", 0.994), ("CvT", 0.98), ("ViT-tiny", 0.9818),
                ("SwinV2-tiny", 0.9675)],
    "model_ii": [("CvT", 0.999)],
    "model_iii": [("CCT", 0.9999)],
}


def run_study(args, data: Path, runs: Path) -> tuple[int, float, str]:
    """The study as a user starts it; (exit code, wall seconds, the command)."""
    cmd = [sys.executable, "tuner/run.py", "--family", args.families, "--profile", "micro",
           "--data", str(data), "--samples", str(args.samples), "--runs-dir", str(runs),
           "--experiment", "campaign", "--seed", str(args.seed), "--no-promote"]
    if args.max_epochs:
        cmd += ["--max-epochs", str(args.max_epochs)]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO)
    shown = " ".join(c if c != sys.executable else "python" for c in cmd).replace(f"{REPO}/", "")
    return done.returncode, time.perf_counter() - start, shown


def measure(client, uri: str, data: Path, args) -> list[dict]:
    """One row per family: its best completed trial on the test split and the shift suite."""
    from tuner.data import load_split
    from tuner.registry.evaluation import evaluate
    from tuner.registry.promotion import load_trial
    from tuner.robustness.evaluate import evaluate_shifts
    from tuner.tracking import schema
    from tuner.tracking.reader import best_completed, find_study, list_trials

    study = find_study(client, "campaign")
    trials = list_trials(client, study.info.experiment_id, study.info.run_id)
    best = best_completed(trials)
    test = load_split(data, "test")
    rows = []
    for family in sorted({t.family for t in trials}):
        mine = [t for t in trials if t.family == family]
        row = {"family": family, "trials": len(mine),
               "completed": sum(t.stop_reason == schema.STOP_COMPLETED for t in mine)}
        if family not in best:
            rows.append(row)
            continue
        trial = best[family]
        with tempfile.TemporaryDirectory() as tmp:
            config, _, network = load_trial(trial, uri, test, Path(tmp))
        evaluation, _ = evaluate(network, config, test, f"{family} trial {trial.run_id}")
        report = evaluate_shifts(network, config, data, n_per_class=args.shift_n_per_class,
                                 what=f"{family} trial {trial.run_id}")
        speed = [m.value for m in client.get_metric_history(trial.run_id,
                                                            schema.IMAGES_PER_SECOND)]
        row.update(val_auc=trial.val_auc, test_auc=evaluation.auc_macro, test_acc=evaluation.acc,
                   shifts={r.name: r.auc_macro for r in report.shifts},
                   worst=report.worst().name, mean_shift=report.score("mean"),
                   params=sum(p.numel() for p in network.parameters()),
                   images_per_s=statistics.median(speed) if speed else float("nan"),
                   epochs=trial.epochs)
        rows.append(row)
        print(f"{family}: test AUC {evaluation.auc_macro:.4f}, mean shift AUC "
              f"{report.score('mean'):.4f}", flush=True)
    return rows


def summary(rows: list[dict], shift_names: list[str]) -> str:
    """What the table says, in sentences computed from it."""
    measured = sorted((r for r in rows if "test_auc" in r), key=lambda r: -r["test_auc"])
    if not measured:
        return "No family completed a trial."
    best = measured[0]
    chance = [r["family"] for r in measured if r["test_auc"] < 0.6]
    drops = sorted(((r["test_auc"] - r["shifts"][n], r["family"], n) for r in measured
                    if r["test_auc"] >= 0.8 for n in shift_names), reverse=True)
    steady = sorted(((max(r["test_auc"] - v for v in r["shifts"].values()), r["family"])
                     for r in measured if r["test_auc"] >= 0.8))
    out = [f"- Best in distribution: **{best['family']}**, test macro AUC {best['test_auc']:.4f} "
           f"({best['params']:,} parameters)."]
    if drops:
        loss, family, shift = drops[0]
        out.append(f"- Largest fall under a shift, among families above 0.8: {family} loses "
                   f"{loss:.3f} of macro AUC under `{shift}`.")
    if steady:
        loss, family = steady[0]
        out.append(f"- Steadiest of those: {family}, at most {loss:.3f} below its in-distribution "
                   "AUC on any shift.")
    if chance:
        out.append(f"- Near chance (test AUC < 0.6) at this budget: {', '.join(chance)}; their "
                   "micro search spaces or the epoch budget are too small for them to learn "
                   "these images, which says nothing of them at full scale.")
    return "\n".join(out)


def markdown(rows: list[dict], args, command: str, wall: float, data_meta) -> str:
    shift_names = next((list(r["shifts"]) for r in rows if "shifts" in r), [])
    head = ("| family | params | trials (completed) | val AUC | test AUC | test acc | "
            + " | ".join(shift_names) + " | mean shift | train img/s |")
    sep = "|" + "---|" * (head.count("|") - 1)
    lines = [head, sep]
    for r in sorted(rows, key=lambda r: -r.get("test_auc", -1)):
        if "test_auc" not in r:
            lines.append(f"| {r['family']} | | {r['trials']} ({r['completed']}) | no trial "
                         "completed its budget | | | " + " | " * len(shift_names) + " |")
            continue
        shifts = " | ".join(f"{r['shifts'][n]:.3f}" for n in shift_names)
        lines.append(f"| {r['family']} | {r['params']:,} | {r['trials']} ({r['completed']}) | "
                     f"{r['val_auc']:.4f} | {r['test_auc']:.4f} | {r['test_acc']:.3f} | "
                     f"{shifts} | {r['mean_shift']:.3f} | {r['images_per_s']:.0f} |")
    findings = summary(rows, shift_names)
    published = "\n".join(f"| {p} | {name} | {auc} |" for p, entries in PUBLISHED.items()
                          for name, auc in entries)
    n_test = data_meta.n_images("test")
    n_train = data_meta.n_images("train")
    return f"""# Results: every family, tuned and tested on this machine

The project's research result so far: each transformer family (and the ResNet-18 baseline)
tuned by lenstune at the **micro** scale on a 2-core CPU, its best trial tested on held-out
images of its own preset and on the same images seen under other observing conditions (the
shift suite: [robustness](robustness.md)).

- Command: `.venv/bin/python bench/campaign.py {' '.join(sys.argv[1:])}`, which ran the study
  `{command}` ({wall / 60:.0f} min wall) and then measured each family's best trial.
- Machine: {machine()}; date {date.today()}.
- Data: preset `{data_meta.preset}` simulated at {data_meta.image_size} px (native
  {data_meta.native_image_size} px), seed {data_meta.seed}: {n_train} training and {n_test}
  test images (three classes, equal counts). Shift sets: the test split's systems,
  {args.shift_n_per_class or 'all'} per class.
- Budget per family: {args.samples} trials of the micro search space (models under ~300k
  parameters, 32 px inputs), ASHA + TPE, the micro epoch budget{f' (max {args.max_epochs})' if args.max_epochs else ''}.
- "val AUC": the best trial's validation macro AUC (how it was picked); "test AUC", "test acc"
  and the shift columns: the same trial on held-out images (macro one-vs-rest AUC); "train
  img/s": median training throughput over its epochs, on this CPU, two trials at a time.

{chr(10).join(lines)}

{findings}

## Published DeepLense figures, for scale

| dataset | model | test macro AUC |
|---|---|---|
{published}

Those are the DeepLense projects' own numbers: GPUs, 30,000 training images per class, full-size
models trained for many epochs. The table above comes from micro models trained for a few epochs
on a few hundred images per class on two CPU cores: it ranks families at this scale and shows
how each one holds under shifts; it does not say how they rank at full scale. The full-scale
campaign is the same command on a GPU cluster with the `gpu` profile:

    ray job submit --working-dir . -- python tuner/run.py --family all --preset model_ii \\
        --n-per-class 30000 --samples 32

followed by `lenstune robustness --model models:/lenstune-model_ii@champion` for the champion.
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="model_ii")
    p.add_argument("--n-per-class", type=int, default=150)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--families", default="all", help="comma list or all")
    p.add_argument("--samples", type=int, default=4, help="trials per family")
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shift-n-per-class", type=int, default=None,
                   help="images per class of each shift set (default: the whole test split)")
    p.add_argument("--runs-dir", type=Path, default=Path("runs/campaign"))
    p.add_argument("--out", type=Path, help="write the markdown here")
    p.add_argument("--reuse", action="store_true",
                   help="measure the study an earlier run of these arguments left in --runs-dir")
    args = p.parse_args(argv)

    import os

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from tuner.data import ensure_simulated, read_meta
    from tuner.tracking.store import mlflow_client

    runs = args.runs_dir.resolve()
    data = ensure_simulated(runs / "data" / f"{args.preset}-{args.img_size}px-n{args.n_per_class}"
                            f"-s{args.seed}", args.preset, args.n_per_class, seed=args.seed,
                            img_size=args.img_size, progress=True)
    record = runs / "study" / "campaign.json"
    if args.reuse and record.is_file():  # measure the study of an earlier run again
        saved = json.loads(record.read_text())
        wall, command = saved["wall_s"], saved["command"]
    else:
        rc, wall, command = run_study(args, data, runs / "study")
        if rc != 0:
            print(f"the study exited {rc}; measuring the trials that completed", file=sys.stderr)
        record.write_text(json.dumps({"wall_s": wall, "command": command}))
    uri = f"sqlite:///{runs / 'study' / 'mlflow.db'}"
    rows = measure(mlflow_client(uri), uri, data, args)
    text = markdown(rows, args, command, wall, read_meta(data))
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
