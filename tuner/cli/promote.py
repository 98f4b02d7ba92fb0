"""`lenstune promote`: register a study's best model and decide the ``champion`` alias."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tuner.tracking.store import check_tracking_store, default_tracking_uri
from tuner.cli.command import CommandParser, UsageError, WorkError, run_command

log = logging.getLogger(__name__)


def build_parser() -> CommandParser:
    parser = CommandParser(
        "promote",
        examples=["lenstune promote --experiment lenstune",
                  "lenstune promote --experiment lenstune --tracking-uri http://127.0.0.1:5000 "
                  "--model-name lenstune-model_ii"],
        description="Evaluate the best completed trial of a study on the test split, register it "
        "(alias challenger) and move the alias champion if it beats the current champion on the "
        "same test data. Running it again for the same trial changes nothing.",
    )
    parser.add_argument("--experiment", required=True, help="MLflow experiment of the study")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI or "
                        "sqlite:///runs/mlflow.db)")
    parser.add_argument("--data", type=Path, default=None,
                        help="dataset folder whose test split is used (default: the study's)")
    parser.add_argument("--study", default=None, metavar="RUN_ID",
                        help="study parent run id (default: the newest study of the experiment)")
    parser.add_argument("--shift-floor", type=float, default=None, metavar="AUC",
                        help="evaluate the candidate (and the champion) on the test shift suite "
                        "and refuse a candidate whose worst-shift macro AUC is below AUC "
                        "(docs/robustness.md); a study tuned on robust_auc is evaluated there "
                        "anyway")
    parser.add_argument("--max-latency-ms", type=float, default=None, metavar="MS",
                        help="only trials whose measured latency_ms (batch 1, on their device) is "
                        "at most MS (the study must have measured it: --objectives or "
                        "--max-latency-ms when tuning)")
    parser.add_argument("--max-params", type=int, default=None, metavar="N",
                        help="only trials with at most N parameters (measured likewise)")
    parser.add_argument("--model-name", default=None,
                        help="registered model name (default: lenstune-<preset or dataset name>)")
    return parser


def promote(args: argparse.Namespace) -> None:
    from tuner.data import DatasetError
    from tuner.registry.promotion import PromotionError, promote_champion, promotion_limits
    from tuner.tracking.reader import StudyNotFoundError

    uri = args.tracking_uri or default_tracking_uri()
    try:
        check_tracking_store(uri)
        result = promote_champion(args.experiment, tracking_uri=uri, data_root=args.data,
                                  study_run_id=args.study, model_name=args.model_name,
                                  echo=log.info, shift_floor=args.shift_floor,
                                  limits=promotion_limits(args.max_latency_ms, args.max_params))
    except (DatasetError, FileNotFoundError, StudyNotFoundError) as exc:  # no such store,
        raise UsageError(str(exc)) from exc  # dataset, experiment or study
    except PromotionError as exc:  # nothing in the experiment can be promoted
        raise WorkError(str(exc)) from exc
    log.info(format_result(result))
    from tuner.tracking.description import describe_study_after_promotion

    describe_study_after_promotion(uri, result)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), promote, argv)


def format_result(result) -> str:
    """The new version's test numbers and, when one was compared, the champion's, each with its
    calibration (ECE, NLL) next to its AUC."""
    c = result.candidate
    lines = [f"{result.model_name} v{result.version} ({result.family}, run {result.trial_run_id}): "
             f"test AUC {c.auc_macro:.4f}, accuracy {c.acc:.4f}, ECE {c.ece:.4f}, NLL {c.nll:.4f} "
             f"on {c.n_images} images"]
    if result.champion is not None:
        h = result.champion
        lines.append(f"compared with champion v{result.champion_version}: test AUC {h.auc_macro:.4f}, "
                     f"accuracy {h.acc:.4f}, ECE {h.ece:.4f}, NLL {h.nll:.4f}")
    return "\n".join(lines)

