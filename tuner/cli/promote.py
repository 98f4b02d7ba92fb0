"""`lenstune promote`: register a study's best model and decide the ``champion`` alias."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tuner.tracking.store import check_tracking_store, default_tracking_uri, quiet_mlflow
from tuner.cli import EXIT_FAILED, EXIT_USAGE, error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lenstune promote",
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
    parser.add_argument("--model-name", default=None,
                        help="registered model name (default: lenstune-<preset or dataset name>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tuner.data import DatasetError
    from tuner.registry.promotion import PromotionError, promote_champion
    from tuner.tracking.reader import StudyNotFoundError

    quiet_mlflow()
    uri = args.tracking_uri or default_tracking_uri()
    try:
        check_tracking_store(uri)
        result = promote_champion(args.experiment, tracking_uri=uri, data_root=args.data,
                                  study_run_id=args.study, model_name=args.model_name)
    except (DatasetError, FileNotFoundError, StudyNotFoundError) as exc:  # no such store,
        return error("promote", str(exc), EXIT_USAGE)  # dataset, experiment or study
    except PromotionError as exc:  # nothing in the experiment can be promoted
        return error("promote", str(exc), EXIT_FAILED)
    print(format_result(result))
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
