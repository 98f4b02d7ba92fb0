"""`lenstune predict`: class probabilities of images with a registered model, as CSV.

INPUT may be a ``.npy`` array (H, W) (one image), (N, H, W) or (N, 1, H, W), or a folder of
DeepLense ``.npy`` files (``<class>/*.npy`` or ``<split>/<class>/*.npy``; class folders
``no``/``sphere``/``vort`` or ``no_sub``/``cdm``/``axion`` add a ``true_class`` column).
Images of another size than the model's are refused unless ``--resize`` is given.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

UNCERTAINTY_METHODS = ("none", "mc_dropout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lenstune predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path, help=".npy array or DeepLense-format folder")
    parser.add_argument("--model", required=True,
                        help="model URI, e.g. models:/lenstune-model_ii@champion, or a local "
                        "model folder")
    parser.add_argument("--out", type=Path, required=True, help="CSV file to write")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI or "
                        "sqlite:///runs/mlflow.db)")
    parser.add_argument("--uncertainty", default="none", choices=UNCERTAINTY_METHODS,
                        help="mc_dropout adds predictive entropy and mutual information "
                        "(nats) from 20 stochastic passes")
    parser.add_argument("--resize", action="store_true",
                        help="resize images of another size (bilinear) instead of refusing them")
    parser.add_argument("--batch-size", type=int, default=256)
    return parser


def read_npy(path: Path) -> np.ndarray:
    """A numeric array from a .npy file (no pickles); ValueError naming the file otherwise."""
    from tuner.registry_model import InputError

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
    from tuner.registry_model import InputError

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


def predict_frame(model, config, images: np.ndarray, method: str, batch_size: int):
    """DataFrame of per-image probabilities, predicted class and (with mc_dropout) uncertainty."""
    import torch

    from tuner.registry_model import predict_probs, probs_frame, resize_batch

    if method == "none":
        return probs_frame(predict_probs(model, images, config.img_size, batch_size),
                           config.class_names)
    from tuner.uncertainty.mc_dropout import MCDropout

    x = resize_batch(torch.from_numpy(images), config.img_size)
    pred = MCDropout(model, T=20, batch_size=batch_size).predict(x)
    frame = probs_frame(pred.probs.double().numpy(), config.class_names)
    frame["entropy"] = pred.entropy().numpy()
    frame["mutual_information"] = pred.mutual_information().numpy()
    return frame


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tuner.data import DatasetError
    from tuner.promotion_cli import check_tracking_store, default_tracking_uri, quiet_mlflow
    from tuner.registry_model import as_image_batch, load_registered

    quiet_mlflow()
    def fail(message: str) -> int:
        print(f"lenstune predict: error: {message}", file=sys.stderr)
        return 1

    if args.batch_size < 1:
        return fail(f"--batch-size must be >= 1, got {args.batch_size}")
    if not args.input.exists():
        return fail(f"input {args.input} does not exist")
    try:  # read and check the images before loading the model: bad input fails fast
        if args.input.is_dir():
            raw, names, classes = read_folder(args.input)
        elif args.input.suffix == ".npy":
            raw = read_npy(args.input)
            names, classes = None, None
        else:
            return fail(f"input {args.input} must be a .npy file or a folder of .npy files")
        uri = args.tracking_uri or default_tracking_uri()
        if args.model.startswith(("models:/", "runs:/")):
            check_tracking_store(uri)
        model, config = load_registered(args.model, tracking_uri=uri)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            images = as_image_batch(raw, config, resize=args.resize)
        for warning in caught:
            print(f"lenstune predict: warning: {warning.message}", file=sys.stderr)
        frame = predict_frame(model, config, images, args.uncertainty, args.batch_size)
    except (ValueError, DatasetError, FileNotFoundError) as exc:  # InputError is a ValueError
        return fail(str(exc))
    except Exception as exc:  # registry lookups: unknown model, alias or server
        if type(exc).__name__ != "MlflowException":
            raise
        return fail(f"cannot load model {args.model}: {exc}")
    if names is not None:
        frame.insert(0, "file", names)
        if any(classes):
            frame["true_class"] = classes
    else:
        frame.insert(0, "index", np.arange(len(frame)))
    write_csv_atomic(frame, args.out)
    print(f"wrote {len(frame)} predictions to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
