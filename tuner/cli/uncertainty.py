"""`lenstune uncertainty`: calibration and uncertainty report of a trained model.

    lenstune uncertainty --model models:/lenstune-model_ii@champion --method temperature \
        --data data/model_ii --shift-data data/model_iii --out reports/unc

Fits the method on the dataset's validation split (Laplace: training split), evaluates it on the
test split and on the test split of every ``--shift-data`` set, writes metrics.json and PNG plots
to ``--out`` and logs both to MLflow under the model's run (or ``--run-id``).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

from tuner.uncertainty.report import METHODS
from tuner.cli.command import CommandParser, UsageError, WorkError, run_command

log = logging.getLogger(__name__)


def build_parser() -> CommandParser:
    p = CommandParser(
        "uncertainty", description=__doc__.split("\n\n")[0].split("\n")[0],
        examples=["lenstune uncertainty --model models:/lenstune-model_ii@champion --method "
                  "temperature --data data/model_ii --out reports/unc",
                  "lenstune uncertainty --model models:/lenstune-model_ii@champion --method "
                  "conformal --data data/model_ii --shift-data data/model_iii --out reports/conf"])
    p.add_argument("--model", action="append", required=True,
                   help="model URI (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/...) or a local model or "
                        "checkpoint directory; repeat for ensembles")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--data", type=Path, required=True, help="dataset root (train/val/test splits)")
    p.add_argument("--shift-data", type=Path, action="append", default=[], help="shifted dataset root; repeatable")
    p.add_argument("--out", type=Path, required=True, help="report folder (must not exist yet)")
    p.add_argument("--alpha", type=float, default=0.1, help="conformal miscoverage level (coverage 1 - alpha)")
    p.add_argument("--conformal-score", choices=("aps", "raps"), default="aps")
    p.add_argument("--mc-samples", type=int, default=20, help="MC dropout passes (Laplace draws 5x as many)")
    p.add_argument("--laplace-structure", choices=("full", "kron"), default="full")
    p.add_argument("--hyper-k", type=int, default=5, help="greedy selection rounds of the hyper-ensemble")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or runs/mlflow.db)")
    p.add_argument("--run-id", default=None, help="MLflow run to log into (default: the registered model's run)")
    p.add_argument("--no-mlflow", action="store_true", help="only write the report folder")
    return p


def load_model(uri: str, tracking_uri: str | None):
    """(nn.Module in eval mode, class names, MLflow run id or None) for a model URI or folder.

    Registered models and run artifacts go through the registry loader (weights-only); a trial
    checkpoint folder (config.json + model.safetensors) is rebuilt from its resolved config.
    A single network sits behind the resize it was trained with, so it takes the dataset's
    images as they are; a registered hyper-ensemble is a WeightedEnsemble (members resize).
    """
    from tuner.models.io import PreparedMember

    local = Path(uri)
    if ":/" not in uri and (local / "config.json").is_file() and (local / "model.safetensors").is_file():
        from tuner.training.checkpoint import load_model as load_checkpoint

        model, config = load_checkpoint(local)
        names = tuple(config.get("class_names") or ("no_sub", "cdm", "axion"))
        return PreparedMember(model, int(config["img_size"])).eval(), names, None
    from tuner.registry.pyfunc import load_registered, model_run_id

    model, config = load_registered(uri, tracking_uri=tracking_uri)
    if not config.is_ensemble:
        model = PreparedMember(model, config.img_size).eval()
    return model, tuple(config.class_names), model_run_id(uri, tracking_uri)


def expand_ensembles(models: list, method: str) -> tuple[list, list[float] | None]:
    """Registered hyper-ensembles given to an ensemble method become their members (with their
    weights for "ensemble"); other methods need single networks except where they apply to any
    classifier (temperature, conformal, mc_dropout, plain)."""
    from tuner.models.io import WeightedEnsemble

    if not any(isinstance(m, WeightedEnsemble) for m in models):
        return models, None
    if method == "laplace":
        raise ValueError("--method laplace applies to a single network; a hyper-ensemble was "
                         "given (use --method ensemble)")
    if method not in ("ensemble", "hyper_ensemble"):
        return models, None
    members, weights = [], []
    for m in models:
        parts = list(m.members) if isinstance(m, WeightedEnsemble) else [m]
        members += parts
        weights += list(m.weights) if isinstance(m, WeightedEnsemble) else [1.0]
    return members, weights if method == "ensemble" else None


def uncertainty(args: argparse.Namespace) -> None:
    if not 0 < args.alpha < 1:
        raise UsageError(f"--alpha must be in (0, 1), got {args.alpha}")
    if args.mc_samples < 1 or args.hyper_k < 1:
        raise UsageError(f"--mc-samples and --hyper-k must be >= 1, got {args.mc_samples} and "
                         f"{args.hyper_k}")
    if args.out.exists():
        raise UsageError(f"--out {args.out} already exists; choose a new folder")
    from tuner.data import DatasetError, load_split
    from tuner.progress import progress
    from tuner.tracking.store import check_tracking_store, default_tracking_uri
    from tuner.uncertainty.conformal import ConformalConfig
    from tuner.uncertainty.report import evaluate, fit_method, log_report

    bar = progress(total=3, desc=f"uncertainty ({args.method})", unit="step")
    # registry lookups and logging use the same store (also with --no-mlflow, which only
    # skips the logging)
    tracking_uri = args.tracking_uri or default_tracking_uri()
    tmp = None
    try:
        bar.set_postfix_str("load data and models")
        if any(uri.startswith(("models:/", "runs:/")) for uri in args.model):
            check_tracking_store(tracking_uri)
        splits = {s: load_split(args.data, s) for s in ("val", "test")}
        train = load_split(args.data, "train") if args.method == "laplace" else None
        shifts = {d.name: load_split(d, "test") for d in args.shift_data}
        loaded = [load_model(uri, tracking_uri) for uri in args.model]
        models, names, run_id = [m for m, _, _ in loaded], loaded[0][1], args.run_id or loaded[0][2]
        if run_id is None and not args.no_mlflow:  # refused before any report is written
            raise UsageError("no MLflow run to log into: pass --run-id or a registered model, or "
                             "use --no-mlflow")
        models, weights = expand_ensembles(models, args.method)
        if tuple(splits["test"].meta.class_names) != tuple(names):
            raise UsageError(f"dataset classes {list(splits['test'].meta.class_names)} differ "
                             f"from the model's {list(names)}")
        bar.update()
        bar.set_postfix_str(f"fit {args.method}")
        fitted = fit_method(
            args.method, models, splits["val"], train=train, mc_samples=args.mc_samples,
            laplace_structure=args.laplace_structure, hyper_k=args.hyper_k,
            conformal=ConformalConfig(score=args.conformal_score, alpha=args.alpha), weights=weights,
        )
        bar.update()
        bar.set_postfix_str("evaluate on test" + (" and shifts" if shifts else ""))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".unc-", dir=args.out.parent))
        report = evaluate(fitted, splits["test"], shifts, class_names=list(names), out_dir=tmp)
        tmp.rename(args.out)
        tmp = None
        bar.update()
    except UsageError:
        raise
    except (ValueError, DatasetError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from exc
    except RuntimeError as exc:  # the fit or evaluation itself failed
        raise WorkError(str(exc)) from exc
    finally:
        bar.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    m = report["metrics"]
    log.info("%s: acc %.4f  nll %.4f  ece %.4f  aurc %.4f", args.method, m["acc"], m["nll"],
             m["ece"], m["aurc"])
    for key in sorted(k for k in m if k.endswith("/ood_auroc_entropy")):
        log.info("  %s: OOD AUROC (entropy) %.4f", key.split("/")[0], m[key])
    log.info("report written to %s", args.out)
    if not args.no_mlflow:
        log_report(report, run_id, tracking_uri=tracking_uri, out_dir=args.out)
        log.info("logged to MLflow run %s", run_id)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), uncertainty, argv)


