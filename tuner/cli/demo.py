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
import logging
import os
import time
from pathlib import Path

from tuner.cli.command import CommandParser, UsageError, run_command

DEMO_FAMILIES = ["levit", "cvt"]
log = logging.getLogger(__name__)


def build_parser() -> CommandParser:
    p = CommandParser("demo", description=__doc__.splitlines()[0], mlflow_bars=False,
                      examples=["make demo", "lenstune demo --samples 4 --max-epochs 6"])
    p.add_argument("--runs-dir", type=Path, default=Path("runs/demo"))
    p.add_argument("--samples", type=int, default=8, help="trials per family")
    p.add_argument("--n-per-class", type=int, default=1000, help="simulated images per class")
    p.add_argument("--max-epochs", type=int, default=12, help="epoch budget of a trial")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), demo, argv)


def demo(args: argparse.Namespace) -> None:
    for name in ("samples", "n_per_class", "max_epochs"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(args, name)} is not allowed, "
                             "it must be >= 1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    start = time.perf_counter()

    from tuner.study.config import resolve_study_config
    from tuner.data import ensure_simulated
    from tuner.study.driver import run_study

    runs = args.runs_dir.resolve()
    data = runs / "data" / f"model_ii-32px-n{args.n_per_class}-s0"
    log.info(f"[1/5] dataset: simulating (or reusing) {data}")
    ensure_simulated(data, "model_ii", args.n_per_class, seed=0, img_size=32)
    montage = runs / "montage.png"
    try:
        from tuner.data.montage import render_montage

        render_montage(data, montage)
        log.info(f"      montage with substructure residuals: {montage}")
    except Exception as exc:  # the montage is a picture for people, not a step of the study
        montage = None
        log.info(f"      (montage skipped: {exc})")

    config = resolve_study_config({
        "families": DEMO_FAMILIES, "profile": "micro", "data": data, "samples": args.samples,
        "max_epochs": args.max_epochs, "runs_dir": runs, "experiment": "lenstune-demo",
        "max_concurrent": 2, "cpus_per_trial": 1,
        # The demo always uses its own embedded store, whatever MLFLOW_TRACKING_URI says.
        "tracking_uri": f"sqlite:///{runs / 'mlflow.db'}",
    })
    log.info(f"[2/5] tuning {', '.join(DEMO_FAMILIES)}: {args.samples} trials each, up to "
             f"{args.max_epochs} epochs, Optuna TPE + ASHA on a local Ray")
    result = run_study(config)
    log.info("[3/5] leaderboard")
    log.info(result.summary())

    # The study itself (tuner.study.driver.run_study) never promotes; this is the only promotion.
    log.info("[4/5] promotion of the best completed trial (test split, registry, champion alias)")
    model_uri = None
    from tuner.data import DatasetError
    from tuner.registry.promotion import PromotionError, promote_champion
    from tuner.tracking.description import describe_study_after_promotion

    try:
        promoted = promote_champion(result.experiment, tracking_uri=result.tracking_uri,
                                    data_root=data, study_run_id=result.parent_run_id,
                                    echo=lambda line: log.info("      %s", line))
    except (PromotionError, DatasetError) as exc:
        log.info("      nothing promoted: %s", exc)
    else:
        c = promoted.candidate
        model_uri = f"models:/{promoted.model_name}/{promoted.version}"
        log.info("      %s (trial run %s): test AUC %.4f, accuracy %.4f on %d images; %s",
                 promoted.family, promoted.trial_run_id, c.auc_macro, c.acc, c.n_images,
                 promoted.decision)
        describe_study_after_promotion(result.tracking_uri, promoted)

    log.info("[5/5] report page of the experiment")
    from tuner.report.page import write_report
    from tuner.tracking.reader import PromotionError as ReportError

    report = runs / "report"
    try:
        page = write_report(result.experiment, report, tracking_uri=result.tracking_uri,
                            force=True, study_run_id=result.parent_run_id)
    except ReportError as exc:
        page = None
        log.info("      no report: %s", exc)

    log.info("\nDone in %.1f min. Where to look (docs/ui.md says which page shows what):",
             (time.perf_counter() - start) / 60)
    from tuner.tracking.description import experiment_page

    log.info("  MLflow UI:        mlflow ui --backend-store-uri %s --host 127.0.0.1 --port 5000",
             result.tracking_uri)
    log.info("                    then %s", experiment_page(result.experiment_id))
    if page is not None:
        log.info("  report page:      %s", page)
    if montage is not None:
        log.info("  montage:          %s", montage)
    if result.leaderboard_csv is not None:
        log.info("  leaderboard:      %s", result.leaderboard_csv)
    if model_uri is not None:
        log.info("  registered model: %s (champion: models:/%s@champion)", model_uri,
                 promoted.model_name)
