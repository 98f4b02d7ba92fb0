"""`lenstune report`: a results page of an experiment, read from MLflow alone.

Writes a new folder ``--out`` (an earlier report there is replaced only with ``--force``):
``index.html``, one self-contained page (images inline, no network) with the leaderboard across
families, ROC per family, learning curves of every trial with the rung where ASHA stopped it,
parameter importances, the champion's calibration, and the study's robustness and Pareto
figures when it logged any; ``README.md`` and ``leaderboard.csv`` with the leaderboard, and the
figures as PNG files. The folder is logged to the study run (artifact ``report/``) unless
``--no-log``. See :mod:`tuner.report`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tuner.cli.command import CommandParser, UsageError, run_command

log = logging.getLogger(__name__)


def build_parser() -> CommandParser:
    parser = CommandParser(
        "report", description=__doc__.split("\n\n")[0], mlflow_bars=False,
        examples=["lenstune report --experiment lenstune --out report/",
                  "lenstune report --experiment lenstune-demo --tracking-uri "
                  "sqlite:///runs/demo/mlflow.db --out runs/demo/report --force"])
    parser.add_argument("--experiment", required=True, help="MLflow experiment name")
    parser.add_argument("--out", type=Path, required=True, help="folder for the report")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing report in --out")
    parser.add_argument("--study", default=None, metavar="RUN_ID",
                        help="study run whose curves, importances and champion are shown "
                        "(default: the newest study of the experiment)")
    parser.add_argument("--no-log", dest="log_to_study", action="store_false",
                        help="do not log the report folder to the study run")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                        "sqlite:///runs/mlflow.db)")
    return parser


def report(args: argparse.Namespace) -> None:
    from tuner.report.page import write_report
    from tuner.tracking.reader import PromotionError
    from tuner.tracking.store import check_tracking_store, default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri()
    try:
        check_tracking_store(uri)
        page = write_report(args.experiment, args.out, tracking_uri=uri, force=args.force,
                            study_run_id=args.study, log_to_study=args.log_to_study)
    except (PromotionError, OSError) as exc:  # no such experiment or study, --out unusable
        raise UsageError(str(exc)) from exc
    log.info("wrote %s (open it in a browser; also README.md and leaderboard.csv)", page)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), report, argv)
