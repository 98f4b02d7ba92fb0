"""``make demo``: a micro study of two families on the CPU, end to end, in a few minutes.

Simulates a small 32 px Model II dataset (reused on later runs) and saves a montage of it,
tunes two families with Optuna TPE + ASHA on a local Ray with an embedded MLflow, prints the
leaderboard, promotes the best completed trial (test split, registry, ``champion`` alias) and
says where to look. Everything goes under ``runs/demo`` (``--runs-dir`` to change).

The families are LeViT and CvT: transformers with convolutional stems, which learn this task
from a few hundred images at 32 px within a CPU budget (a plain ViT of the same size stays
near chance for many more epochs).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tuner.cli import EXIT_USAGE

DEMO_FAMILIES = ["levit", "cvt"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tuner.cli.demo", description=__doc__.splitlines()[0])
    p.add_argument("--runs-dir", type=Path, default=Path("runs/demo"))
    p.add_argument("--samples", type=int, default=8, help="trials per family")
    p.add_argument("--n-per-class", type=int, default=1000, help="simulated images per class")
    p.add_argument("--max-epochs", type=int, default=12, help="epoch budget of a trial")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("samples", "n_per_class", "max_epochs"):
        if getattr(args, name) < 1:
            print(f"python -m tuner.cli.demo: error: --{name.replace('_', '-')} must be >= 1, "
                  f"got {getattr(args, name)}", file=sys.stderr)
            return EXIT_USAGE
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    start = time.perf_counter()

    from tuner.study.config import resolve_study_config
    from tuner.data import ensure_simulated
    from tuner.study.driver import run_study

    runs = args.runs_dir.resolve()
    data = runs / "data" / f"model_ii-32px-n{args.n_per_class}-s0"
    print(f"[1/4] dataset: simulating (or reusing) {data}", flush=True)
    ensure_simulated(data, "model_ii", args.n_per_class, seed=0, img_size=32)
    montage = runs / "montage.png"
    try:
        from tuner.data.montage import render_montage

        render_montage(data, montage)
        print(f"      montage with substructure residuals: {montage}")
    except Exception as exc:  # the montage is a picture for people, not a step of the study
        montage = None
        print(f"      (montage skipped: {exc})")

    config = resolve_study_config({
        "families": DEMO_FAMILIES, "profile": "micro", "data": data, "samples": args.samples,
        "max_epochs": args.max_epochs, "runs_dir": runs, "experiment": "lenstune-demo",
        "max_concurrent": 2, "cpus_per_trial": 1,
        # The demo always uses its own embedded store, whatever MLFLOW_TRACKING_URI says.
        "tracking_uri": f"sqlite:///{runs / 'mlflow.db'}",
    })
    print(f"[2/4] tuning {', '.join(DEMO_FAMILIES)}: {args.samples} trials each, up to "
          f"{args.max_epochs} epochs, Optuna TPE + ASHA on a local Ray", flush=True)
    result = run_study(config)
    print("[3/4] leaderboard")
    print(result.summary())

    # The study itself (tuner.study.driver.run_study) never promotes; this is the only promotion.
    print("[4/4] promotion of the best completed trial (test split, registry, champion alias)",
          flush=True)
    model_uri = None
    from tuner.data import DatasetError
    from tuner.registry.promotion import PromotionError, promote_champion

    try:
        promoted = promote_champion(result.experiment, tracking_uri=result.tracking_uri,
                                    data_root=data, study_run_id=result.parent_run_id,
                                    echo=lambda line: print(f"      {line}"))
    except (PromotionError, DatasetError) as exc:
        print(f"      nothing promoted: {exc}")
    else:
        c = promoted.candidate
        model_uri = f"models:/{promoted.model_name}/{promoted.version}"
        print(f"      {promoted.family} (trial run {promoted.trial_run_id}): test AUC "
              f"{c.auc_macro:.4f}, accuracy {c.acc:.4f} on {c.n_images} images; {promoted.decision}")

    print(f"\nDone in {(time.perf_counter() - start) / 60:.1f} min. Where to look:")
    print(f"  MLflow UI:        mlflow ui --backend-store-uri {result.tracking_uri} "
          "--host 127.0.0.1 --port 5000   (then http://127.0.0.1:5000)")
    if montage is not None:
        print(f"  montage:          {montage}")
    if result.leaderboard_csv is not None:
        print(f"  leaderboard:      {result.leaderboard_csv}")
    if model_uri is not None:
        print(f"  registered model: {model_uri} (champion: models:/{promoted.model_name}@champion)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
