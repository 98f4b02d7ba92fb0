"""`lenstune predict`: class probabilities of images with a registered model, as CSV.

INPUT may be a ``.npy`` array (H, W) (one image), (N, H, W) or (N, 1, H, W), or a folder of
DeepLense ``.npy`` files (``<class>/*.npy`` or ``<split>/<class>/*.npy``; class folders
``no``/``sphere``/``vort`` or ``no_sub``/``cdm``/``axion`` add a ``true_class`` column).
Images of another size than the model's are refused unless ``--resize`` is given.
A damaged registered model (weights truncated or modified: their SHA-256 is checked) is refused
with exit 2; a model that gives NaN or infinite probabilities fails with exit 1; either way
nothing is written.

``--uncertainty METHOD`` adds per-image columns: ``entropy`` (predictive entropy, nats) always,
``mutual_information`` (nats) for the sampling methods (mc_dropout, laplace, ensemble) and
``conformal_set`` / ``conformal_set_size`` for conformal. Methods fitted on data (temperature,
laplace, conformal) use the model's own dataset: its validation split (Laplace: training split),
found through the registry or given with ``--data``.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from tuner.cli.command import CommandParser, UsageError, WorkError, run_command

log = logging.getLogger(__name__)

UNCERTAINTY_METHODS = ("none", "temperature", "mc_dropout", "laplace", "conformal", "ensemble")
FITTED = ("temperature", "laplace", "conformal")  # need the model's dataset


def build_parser() -> CommandParser:
    parser = CommandParser(
        "predict", description=__doc__.split("\n\n")[0],
        examples=["lenstune predict images.npy --model models:/lenstune-model_ii@champion "
                  "--out preds.csv",
                  "lenstune predict ~/deeplense/Model_II/test --model "
                  "models:/lenstune-model_ii@champion --uncertainty conformal --out preds.csv"])
    parser.add_argument("input", type=Path, help=".npy array or DeepLense-format folder")
    parser.add_argument("--model", required=True,
                        help="model URI, e.g. models:/lenstune-model_ii@champion, or a local "
                        "model folder")
    parser.add_argument("--out", type=Path, required=True, help="CSV file to write")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI or "
                        "sqlite:///runs/mlflow.db)")
    parser.add_argument("--uncertainty", default="none", choices=UNCERTAINTY_METHODS,
                        help="add per-image entropy (and mutual information for mc_dropout, "
                        "laplace, ensemble; prediction sets for conformal), nats")
    parser.add_argument("--data", type=Path, default=None,
                        help="the model's dataset folder, for temperature/laplace/conformal "
                        "(default: the dataset its study recorded)")
    parser.add_argument("--alpha", type=float, default=0.1,
                        help="conformal miscoverage: sets hold the true class with probability "
                        ">= 1 - alpha")
    parser.add_argument("--conformal-score", choices=("aps", "raps"), default="aps")
    parser.add_argument("--mc-samples", type=int, default=20,
                        help="MC dropout passes (Laplace draws 5x as many)")
    parser.add_argument("--resize", action="store_true",
                        help="resize images of another size (bilinear) instead of refusing them")
    parser.add_argument("--batch-size", type=int, default=256)
    return parser


def read_npy(path: Path) -> np.ndarray:
    """A numeric array from a .npy file (no pickles); ValueError naming the file otherwise."""
    from tuner.registry.pyfunc import InputError

    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes)")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"{path} is not a readable numeric .npy array: {exc}") from exc


def read_folder(folder: Path) -> tuple[np.ndarray, list[str], list[str]]:
    """Images (N, H, W) of every .npy below ``folder`` (sorted), their relative paths and true
    classes ("" where no class folder is in the path). DeepLense object arrays
    ``[image, m_axion]`` are read without unpickling arbitrary objects."""
    from tuner.data.deeplense import CLASS_FOLDERS, read_deeplense_file
    from tuner.registry.pyfunc import InputError

    files = sorted(p for p in folder.rglob("*.npy") if p.is_file())
    if not files:
        raise InputError(f"{folder} holds no .npy files")
    images, names, classes = [], [], []
    for file in files:
        image, _ = read_deeplense_file(file)
        rel = file.relative_to(folder)
        images.append(image)
        names.append(str(rel))
        classes.append(next((CLASS_FOLDERS[p] for p in rel.parts[:-1] if p in CLASS_FOLDERS), ""))
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise InputError(f"images in {folder} have different shapes {sorted(shapes)}")
    return np.stack(images), names, classes


def study_data_root(model_uri: str, tracking_uri: str | None) -> Path | None:
    """The dataset folder recorded by the study a registered model (or run) came from."""
    if not model_uri.startswith(("models:/", "runs:/")):
        return None
    from tuner.tracking.store import mlflow_client

    from tuner.tracking.reader import PromotionError, resolve_data_root
    from tuner.registry.pyfunc import model_run_id

    client = mlflow_client(tracking_uri)
    run = client.get_run(model_run_id(model_uri, tracking_uri))
    parent = run.data.tags.get("mlflow.parentRunId")
    study = client.get_run(parent) if parent else run
    try:
        return resolve_data_root(study, None)
    except PromotionError:
        return None


def calibration_splits(args, config, tracking_uri: str | None) -> dict:
    """The model's dataset splits a fitted method needs: val (and train for laplace)."""
    from tuner.data import load_split

    root = args.data or study_data_root(args.model, tracking_uri)
    if root is None:
        raise ValueError(f"--uncertainty {args.uncertainty} is fitted on the model's dataset: "
                         f"pass --data DIR (the dataset {args.model} was trained on)")
    splits = {"val": load_split(root, "val")}
    digest = splits["val"].meta.digest
    if config.dataset_digest and digest != config.dataset_digest:
        raise ValueError(f"--data {root} is dataset {digest[:12]}... but the model was trained on "
                         f"{config.dataset_digest[:12]}...; calibrate on the model's own dataset")
    if args.uncertainty == "laplace":
        splits["train"] = load_split(root, "train")
    return splits


def predict_frame(model, config, images: np.ndarray, method: str, batch_size: int, *,
                  splits: dict | None = None, alpha: float = 0.1, score: str = "aps",
                  mc_samples: int = 20):
    """DataFrame of per-image probabilities, predicted class and the uncertainty columns of
    ``method`` (see the module docstring). ``images``: validated (N, 1, H, W) float32."""
    import torch

    from tuner.models.io import predict_probs
    from tuner.progress import progress
    from tuner.registry.pyfunc import probs_frame

    if method == "none":  # in chunks of batches, for the progress bar
        chunk = batch_size * 8
        with progress(total=len(images), desc="predict", unit="img") as bar:
            parts = []
            for start in range(0, len(images), chunk):
                parts.append(predict_probs(model, images[start:start + chunk], config.img_size,
                                           batch_size=batch_size))
                bar.update(len(parts[-1]))
        probs = np.concatenate(parts) if parts else np.zeros((0, len(config.class_names)))
        return probs_frame(probs, config.class_names)
    from tuner.models.io import PreparedMember
    from tuner.uncertainty.ensemble import ensemble_predict

    if method == "ensemble" and not config.is_ensemble:
        raise ValueError(f"--uncertainty ensemble needs a registered hyper-ensemble (e.g. "
                         f"models:/NAME@ensemble); this model is one {config.family} network")
    if method == "laplace" and config.is_ensemble:
        raise ValueError("--uncertainty laplace applies to a single network; this model is a "
                         "hyper-ensemble (use --uncertainty ensemble)")
    # ensemble members resize for themselves; a single network sits behind its training resize
    net = model if config.is_ensemble else PreparedMember(model, config.img_size).eval()
    x = torch.from_numpy(images)
    conformal = None
    steps = ["predict"] if method == "ensemble" else ["fit " + method, "predict"]
    with progress(total=len(steps), desc=f"predict ({method})", unit="step") as bar:
        if method == "ensemble":
            pred = ensemble_predict(list(model.members), x, model.weights, batch_size)
        else:
            from tuner.uncertainty.conformal import ConformalConfig
            from tuner.uncertainty.report import fit_method

            splits = splits or {}
            bar.set_postfix_str(steps[0])
            fitted = fit_method(method, [net], splits.get("val"), train=splits.get("train"),
                                mc_samples=mc_samples, conformal=ConformalConfig(
                                    score=score, alpha=alpha, randomized=False))
            bar.update()
            bar.set_postfix_str("predict")
            pred, conformal = fitted.method.predict(x), fitted.conformal
        bar.update()
    frame = probs_frame(pred.probs.double().numpy(), config.class_names)
    frame["entropy"] = pred.entropy().numpy()
    if pred.samples is not None:
        frame["mutual_information"] = pred.mutual_information().numpy()
    if conformal is not None:
        sets = conformal.predict_sets(pred.probs.numpy())
        frame["conformal_set"] = ["|".join(n for n, inside in zip(config.class_names, row) if inside)
                                  for row in sets]
        frame["conformal_set_size"] = sets.sum(1)
    return frame


def non_finite_rows(frame) -> np.ndarray:
    """Rows of a prediction frame with a NaN or infinite number in any numeric column
    (probabilities, entropy, mutual information)."""
    numeric = frame.select_dtypes(include="number").to_numpy(dtype=np.float64)
    return np.flatnonzero(~np.isfinite(numeric).all(axis=1))


def write_csv_atomic(frame, path: Path) -> None:
    """Write the CSV to a temporary file beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            frame.to_csv(handle, index=False, float_format="%.8g")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def predict(args: argparse.Namespace) -> None:
    from tuner.data import DatasetError
    from tuner.tracking.store import check_tracking_store, default_tracking_uri
    from tuner.registry.pyfunc import as_image_batch, load_registered

    if args.batch_size < 1:
        raise UsageError(f"--batch-size {args.batch_size} is not allowed, it must be >= 1")
    if not 0 < args.alpha < 1 or args.mc_samples < 1:
        raise UsageError(f"--alpha must be in (0, 1) and --mc-samples >= 1; got {args.alpha} "
                         f"and {args.mc_samples}")
    if not args.input.exists():
        raise UsageError(f"input {args.input} does not exist, give a .npy file or a folder of "
                         ".npy files")
    try:  # read and check the images before loading the model: bad input fails fast
        if args.input.is_dir():
            raw, names, classes = read_folder(args.input)
        elif args.input.suffix == ".npy":
            raw = read_npy(args.input)
            names, classes = None, None
        else:
            raise UsageError(f"input {args.input} is not allowed, give a .npy file or a folder "
                             "of .npy files")
        uri = args.tracking_uri or default_tracking_uri()
        if args.model.startswith(("models:/", "runs:/")):
            check_tracking_store(uri)
        model, config = load_registered(args.model, tracking_uri=uri)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            images = as_image_batch(raw, config, resize=args.resize)
        for warning in caught:
            log.warning("%s", warning.message)
        splits = (calibration_splits(args, config, uri) if args.uncertainty in FITTED else None)
        frame = predict_frame(model, config, images, args.uncertainty, args.batch_size,
                              splits=splits, alpha=args.alpha, score=args.conformal_score,
                              mc_samples=args.mc_samples)
    except (ValueError, DatasetError, FileNotFoundError) as exc:  # InputError is a ValueError
        raise UsageError(str(exc)) from exc
    except Exception as exc:  # registry lookups: unknown model, alias or server
        if type(exc).__name__ != "MlflowException":
            raise
        raise UsageError(f"cannot load model {args.model}: {exc}") from exc
    bad = non_finite_rows(frame)
    if len(bad):
        first = names[bad[0]] if names is not None else f"index {bad[0]}"
        raise WorkError(f"model {args.model} gave NaN or infinite probabilities for {len(bad)} "
                        f"of {len(frame)} image(s) (first: {first}); its weights hold non-finite "
                        f"values or the network overflowed; nothing was written to {args.out}")
    if names is not None:
        frame.insert(0, "file", names)
        if any(classes):
            frame["true_class"] = classes
    else:
        frame.insert(0, "index", np.arange(len(frame)))
    write_csv_atomic(frame, args.out)
    log.info("wrote %d predictions to %s", len(frame), args.out)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), predict, argv)
