"""``make demo``: a micro study of two families on the CPU, end to end, in a few minutes.

Simulates a small 32 px Model II dataset (reused on later runs) and saves a montage of it,
tunes two families with Optuna TPE + ASHA on a local Ray, prints the leaderboard, promotes
the best model when the promotion module is available, and says how to open the MLflow UI.
Everything goes under ``runs/demo`` (``--runs-dir`` to change).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEMO_FAMILIES = ["vit", "scratch"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tuner.demo", description=__doc__.splitlines()[0])
    p.add_argument("--runs-dir", type=Path, default=Path("runs/demo"))
    p.add_argument("--samples", type=int, default=4, help="trials per family")
    p.add_argument("--n-per-class", type=int, default=150)
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

    from tuner.config import resolve_study_config
    from tuner.data import ensure_simulated
    from tuner.study import run_study

    runs = args.runs_dir.resolve()
    data = runs / "data" / f"model_ii-32px-n{args.n_per_class}-s0"
    print(f"[1/4] dataset: simulating (or reusing) {data}")
    ensure_simulated(data, "model_ii", args.n_per_class, seed=0, img_size=32)
    try:
        from tuner.data.montage import render_montage

        montage = runs / "montage.png"
        render_montage(data, montage)
        print(f"      montage with substructure residuals: {montage}")
    except Exception as exc:  # the montage is a picture for people, not a step of the study
        print(f"      (montage skipped: {exc})")

    config = resolve_study_config({
        "families": DEMO_FAMILIES, "profile": "micro", "data": data, "samples": args.samples,
        "runs_dir": runs, "experiment": "lenstune-demo", "max_concurrent": 2,
    })
    print(f"[2/4] tuning {', '.join(DEMO_FAMILIES)}: {args.samples} trials each, Optuna TPE + ASHA")
    result = run_study(config)
    print("[3/4] leaderboard")
    print(result.summary())

    try:
        from tuner.promotion import promote_champion
    except ImportError:
        promote_champion = None
    if promote_champion is not None:
        print("[4/4] promotion of the best completed trial")
        promote_champion(result.experiment, tracking_uri=result.tracking_uri, data_root=data,
                         study_run_id=result.parent_run_id)
    print(f"\nOpen the MLflow UI:  mlflow ui --backend-store-uri {result.tracking_uri} "
          "--host 127.0.0.1 --port 5000   (then http://127.0.0.1:5000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
