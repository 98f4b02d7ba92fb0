"""`lenstune robustness`: how a registered model holds when the observing conditions change.

    lenstune robustness --model models:/lenstune-model_ii@champion

Evaluates the model on its dataset's test split and on the split's shift suite (the same lens
systems with noise x0.5, x2, x4, PSF FWHM x0.75, x1.5, source magnitude +-1 and Model III's
instrument on the same pixel grid; simulated once into the dataset's ``shifts/test/``), plus any
DeepLense-format folders given with ``--shift-data``. Prints the table (macro AUC, its change,
accuracy, ECE per set), writes robustness.json/.csv/.png to ``--out`` and logs them, with the
metrics ``test_auc_macro.<shift>`` and ``test_robust_auc_mean``/``_worst``, to the model's run.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from tuner.cli.command import CommandParser, UsageError, WorkError, output, run_command

log = logging.getLogger(__name__)


def build_parser() -> CommandParser:
    p = CommandParser(
        "robustness", description=__doc__.split("\n\n")[0],
        examples=["lenstune robustness --model models:/lenstune-model_ii@champion",
                  "lenstune robustness --model models:/lenstune-model_ii/3 --shifts noise_x2,"
                  "psf_x1.5 --shift-data ~/deeplense/Model_III/test --out reports/robust"])
    p.add_argument("--model", required=True,
                   help="registered model (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/...)")
    p.add_argument("--data", type=Path, default=None,
                   help="dataset whose test split and shift suite are used (default: the one "
                   "its study trained on)")
    p.add_argument("--shifts", default=None,
                   help="comma list of shifts (default: all of them; `none` for only "
                   "--shift-data folders)")
    p.add_argument("--shift-data", type=Path, action="append", default=[], metavar="FOLDER",
                   help="a DeepLense-format folder (no/, sphere/, vort/ .npy files) to add as a "
                   "shift; repeatable")
    p.add_argument("--n-per-class", type=int, default=None,
                   help="images per class of each simulated shift (default: the whole split)")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for robustness.json/.csv/.png (default: only MLflow)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI or "
                   "sqlite:///runs/mlflow.db)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to the model's run")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), robustness, argv)


def _data_root(args, client, uri: str, tracking_uri: str) -> Path:
    """``--data``, else the dataset of the study the model's version came from."""
    if args.data is not None:
        return args.data
    from tuner.registry.pyfunc import model_run_id
    from tuner.tracking import schema
    from tuner.tracking.reader import resolve_data_root

    run_id = model_run_id(uri, tracking_uri)
    if run_id is not None:
        run = client.get_run(run_id)
        study_id = run.data.tags.get(schema.PARENT_RUN_TAG) or run_id
        try:
            return resolve_data_root(client.get_run(study_id), None)
        except Exception:  # noqa: BLE001 - named below
            pass
    raise UsageError(f"cannot tell which dataset {uri} was trained on; pass --data DIR")


def robustness(args: argparse.Namespace) -> int:
    from tuner.data import DatasetError
    from tuner.registry.pyfunc import load_registered, model_run_id
    from tuner.robustness.evaluate import evaluate_shifts, format_robustness, write_robustness
    from tuner.robustness.shifts import SHIFTS
    from tuner.tracking import schema
    from tuner.tracking.store import check_tracking_store, default_tracking_uri, mlflow_client

    tracking_uri = args.tracking_uri or default_tracking_uri()
    names = None
    if args.shifts is not None:
        names = [] if args.shifts.strip() == "none" else [
            n.strip() for n in args.shifts.split(",") if n.strip()]
        unknown = [n for n in names if n not in SHIFTS]
        if unknown:
            raise UsageError(f"shift {unknown[0]!r} is not allowed; allowed: {', '.join(SHIFTS)}, none")
    for folder in args.shift_data:
        if not folder.is_dir():
            raise UsageError(f"--shift-data {folder} is not a folder; allowed: a DeepLense-format "
                             "folder (no/, sphere/, vort/)")
    if args.n_per_class is not None and args.n_per_class < 1:
        raise UsageError(f"--n-per-class {args.n_per_class} is not allowed; allowed: >= 1")
    if args.out is not None and args.out.exists():
        raise UsageError(f"--out {args.out} exists; allowed: a folder that does not exist yet")
    try:
        check_tracking_store(tracking_uri)
        client = mlflow_client(tracking_uri)
        model, config = load_registered(args.model, tracking_uri=tracking_uri)
    except Exception as exc:  # noqa: BLE001 - a model that cannot be loaded is bad input
        raise UsageError(f"cannot load model {args.model}: {exc}") from exc
    data_root = _data_root(args, client, args.model, tracking_uri)
    try:
        report = evaluate_shifts(model, config, data_root, names=names, folders=args.shift_data,
                                 n_per_class=args.n_per_class, what=args.model,
                                 progress=lambda name: log.info("evaluating on %s", name))
    except (DatasetError, ValueError) as exc:
        raise UsageError(str(exc)) from exc
    output(format_robustness(report))
    title = f"{args.model} on {data_root.name}: macro AUC under shifts"
    with tempfile.TemporaryDirectory(prefix="lenstune-robustness-") as tmp:
        folder = write_robustness(args.out or Path(tmp) / "robustness", report, title)
        run_id = None if args.no_mlflow else model_run_id(args.model, tracking_uri)
        if run_id is not None:
            import time

            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            client.log_batch(run_id, metrics=[Metric(k, v, now, 0)
                                              for k, v in report.metrics().items()])
            client.log_artifacts(run_id, str(folder), schema.ROBUSTNESS_ARTIFACT)
            log.info("logged to run %s under robustness/", run_id)
    if args.out is not None:
        log.info("wrote %s", args.out)
    if not report.shifts:
        raise WorkError("nothing to evaluate")
    return 0
