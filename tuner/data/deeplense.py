"""Import the DeepLense folder layout into the store, without executing pickled code.

Source layout: ``SRC/<split>/<class>/*.npy`` with splits ``train`` (required), ``val`` and ``test``
(optional; a missing one is carved from train, stratified and seeded), and class folders
``no``/``sphere``/``vort`` or ``no_sub``/``cdm``/``axion``. A file holds one image, (H, W) or
(1, H, W), or (axion files) an object array ``[image, m_axion]`` whose mass (eV) becomes the
per-image parameter ``m_axion_ev`` (NaN elsewhere).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from tuner.progress import progress as progress_bar

from tuner.data.store import (
    SPLITS,
    DatasetError,
    DatasetMeta,
    Split,
    SplitWriter,
    combine_digests,
    package_version,
    split_digest,
    staged_dataset,
    write_meta,
)
from tuner.lensing.presets import CLASS_NAMES

# DeepLense folder name -> our class name (labels index the simulator's CLASS_NAMES)
CLASS_FOLDERS: dict[str, str] = {
    "no": "no_sub", "no_sub": "no_sub",
    "sphere": "cdm", "cdm": "cdm",
    "vort": "axion", "axion": "axion",
}

# The only globals an object .npy holding numpy arrays and floats needs. Old files name the
# numpy 1.x module, new ones numpy 2.x's; both map to the running numpy's functions.
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_SCALAR = np.float64(0).__reduce__()[0]
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays, dtypes and scalars and refuses every other global."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle API
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only numpy arrays, dtypes and scalars are allowed"
            ) from None


def read_deeplense_file(path: Path) -> tuple[np.ndarray, float]:
    """Read one DeepLense .npy: image float32 (H, W) and axion mass in eV (NaN if absent).

    Plain arrays load with ``allow_pickle=False``; object arrays go through an unpickler that
    only allows numpy array reconstruction. DatasetError naming the file on anything else.
    """
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                _, _, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                _, _, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise DatasetError(f"corrupt or unsupported file {path}: .npy format version {version}; allowed 1.0, 2.0")
            if dtype.hasobject:
                obj = _ArrayOnlyUnpickler(fh).load()
            else:
                fh.seek(0)
                obj = np.load(fh, allow_pickle=False)
    except DatasetError:
        raise
    except Exception as exc:  # any parse failure means a corrupt or unsafe file
        raise DatasetError(f"corrupt or unsafe file {path}: {exc}") from exc
    return _interpret(path, obj)


def _interpret(path: Path, obj: object) -> tuple[np.ndarray, float]:
    mass = float("nan")
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject:
        if obj.shape != (2,):
            raise DatasetError(f"{path}: object array of shape {obj.shape}; allowed: [image, m_axion] (shape (2,))")
        try:
            mass = float(obj[1])
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{path}: second entry {obj[1]!r} is not an axion mass in eV") from exc
        if not np.isfinite(mass) or mass <= 0:
            raise DatasetError(f"{path}: axion mass {mass} must be a positive finite number (eV)")
        obj = obj[0]
    if not isinstance(obj, np.ndarray) or obj.dtype.kind not in "fiu":
        raise DatasetError(f"{path}: expected a numeric image array, found {type(obj).__name__}")
    image = obj[0] if obj.ndim == 3 and obj.shape[0] == 1 else obj
    if image.ndim != 2 or image.shape[0] != image.shape[1]:
        raise DatasetError(f"{path}: image shape {obj.shape}; allowed: (H, W) or (1, H, W) with H == W")
    image = image.astype(np.float32)
    if not np.isfinite(image).all():
        raise DatasetError(f"{path}: image holds NaN or infinite values")
    return image, mass


def _list_source(src: Path) -> dict[str, list[tuple[Path, int]]]:
    """Split -> sorted (file, label) for every split folder present; DatasetError on bad layout."""
    if not src.is_dir():
        raise DatasetError(f"source {src} is not a folder")
    plan: dict[str, list[tuple[Path, int]]] = {}
    for entry in sorted(src.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if entry.name not in SPLITS:
            raise DatasetError(f"unknown split folder {entry}; allowed: {', '.join(SPLITS)}")
        plan[entry.name] = _list_split(entry)
    if "train" not in plan:
        raise DatasetError(f"{src} has no train/ folder; expected {src}/train/<class>/*.npy")
    return plan


def _list_split(folder: Path) -> list[tuple[Path, int]]:
    files: list[tuple[Path, int]] = []
    seen: dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir() or entry.name not in CLASS_FOLDERS:
            raise DatasetError(f"unknown class folder {entry}; allowed: {', '.join(CLASS_FOLDERS)}")
        name = CLASS_FOLDERS[entry.name]
        if name in seen:
            raise DatasetError(f"{entry} and {seen[name]} both hold class {name}; keep one")
        seen[name] = entry
        npys = []
        for file in sorted(entry.iterdir()):
            if file.name.startswith("."):
                continue
            if file.suffix != ".npy" or not file.is_file():
                raise DatasetError(f"unexpected file {file}; class folders hold only .npy images")
            npys.append(file)
        if not npys:
            raise DatasetError(f"class folder {entry} holds no .npy files")
        files += [(file, CLASS_NAMES.index(name)) for file in npys]
    missing = [n for n in CLASS_NAMES if n not in seen]
    if missing:
        raise DatasetError(f"{folder} lacks class folders for {missing}; need one of each: no/sphere/vort")
    return files


def _carve(files: list[tuple[Path, int]], fraction: float, seed: int, salt: int):
    """Move a seeded, per-class ``fraction`` of ``files`` out: (kept, carved)."""
    kept, carved = [], []
    for label in range(len(CLASS_NAMES)):
        group = [f for f in files if f[1] == label]
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(salt, label)))
        order = rng.permutation(len(group))
        n_out = max(1, round(fraction * len(group)))
        if n_out >= len(group):
            raise DatasetError(
                f"cannot carve {fraction:.0%} of {len(group)} train images of class {CLASS_NAMES[label]} "
                "and keep at least one for training"
            )
        carved += sorted(group[i] for i in order[:n_out])
        kept += sorted(group[i] for i in order[n_out:])
    return sorted(kept, key=lambda f: (f[1], f[0])), sorted(carved, key=lambda f: (f[1], f[0]))


def import_deeplense(
    src: str | Path,
    root: str | Path,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    force: bool = False,
    progress: bool = False,
) -> DatasetMeta:
    """Convert the DeepLense folder ``src`` into a store at ``root`` (atomically; see module doc).

    Missing ``val``/``test`` splits are carved from train: a seeded ``val_fraction`` /
    ``test_fraction`` of each class. Every image must have the same square shape.
    """
    src = Path(src)
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 < value < 1:
            raise DatasetError(f"{name} must be in (0, 1), got {value}")
    plan = _list_source(src)
    for split, fraction, salt in (("val", val_fraction, 1), ("test", test_fraction, 2)):
        if split not in plan:
            plan["train"], plan[split] = _carve(plan["train"], fraction, seed, salt)
    image_size = read_deeplense_file(plan["train"][0][0])[0].shape[-1]
    total = sum(len(files) for files in plan.values())
    digests: dict[str, str] = {}
    with staged_dataset(root, force=force) as tmp, progress_bar(
        total=total, unit="img", desc="import", enabled=progress
    ) as bar:
        for split in SPLITS:
            writer = SplitWriter(tmp / split, len(plan[split]), image_size)
            for i, (path, label) in enumerate(plan[split]):
                image, mass = read_deeplense_file(path)
                if image.shape != (image_size, image_size):
                    raise DatasetError(
                        f"{path}: image shape {image.shape} differs from the dataset's "
                        f"{(image_size, image_size)} (first train image); all images must match"
                    )
                params = {
                    "m_axion_ev": np.array([mass]),
                    "source_file": np.array([str(path.relative_to(src))]),
                }
                writer.write(i, image[None, None], np.array([label]), params)
                bar.update(1)
            digests[split] = writer.close()
        meta = DatasetMeta(
            source="deeplense",
            preset=None,
            seed=seed,
            class_names=CLASS_NAMES,
            image_size=image_size,
            counts={
                s: {n: sum(1 for _, lab in plan[s] if lab == k) for k, n in enumerate(CLASS_NAMES)} for s in SPLITS
            },
            param_names=("m_axion_ev", "source_file"),
            digest=combine_digests(digests),
            split_digests=digests,
            version=package_version(),
            source_path=str(src.resolve()),
            preprocessing="as stored in the source files (prepared batch by batch when used)",
        )
        write_meta(tmp, meta)
    return meta


def read_deeplense_split(folder: str | Path, *, split: str = "test") -> Split:
    """One DeepLense-format split in memory, e.g. a user's evaluation set of another survey.

    ``folder`` holds class folders (``<folder>/<class>/*.npy``) or split folders
    (``<folder>/<split>/<class>/*.npy``, of which ``split`` is read). Files are read as
    :func:`import_deeplense` reads them (no pickled code, the same checks and errors); images
    are kept as stored (a network's batches are prepared as usual). Returns a Split whose meta
    holds only ``split`` (source "deeplense", no preset) with its digest; ``source_file`` is
    relative to the folder holding the class folders.
    """
    import torch

    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"DeepLense folder {folder} is not a folder")
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    children = {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}
    source = folder / split if split in children else folder
    if source is folder and children & set(SPLITS):
        raise DatasetError(f"{folder} has split folders {sorted(children & set(SPLITS))} but no {split}/; "
                           f"allowed: <folder>/{split}/<class>/*.npy or <folder>/<class>/*.npy")
    files = sorted(_list_split(source), key=lambda f: (f[1], f[0]))
    first = read_deeplense_file(files[0][0])[0]
    images = np.empty((len(files), 1, *first.shape), dtype=np.float32)
    masses = np.empty(len(files))
    for i, (path, _) in enumerate(files):
        image, masses[i] = read_deeplense_file(path)
        if image.shape != first.shape:
            raise DatasetError(f"{path}: image shape {image.shape} differs from {first.shape} ({files[0][0]}); "
                               "all images must match")
        images[i, 0] = image
    labels = np.array([label for _, label in files], dtype=np.int64)
    params = {"m_axion_ev": masses, "source_file": np.array([str(p.relative_to(source)) for p, _ in files])}
    digest = split_digest(images, labels, params)
    meta = DatasetMeta(
        source="deeplense", preset=None, seed=None, class_names=CLASS_NAMES, image_size=first.shape[-1],
        counts={split: {n: int((labels == k).sum()) for k, n in enumerate(CLASS_NAMES)}},
        param_names=tuple(sorted(params)), digest=combine_digests({split: digest}), split_digests={split: digest}, version=package_version(),
        source_path=str(folder.resolve()),
        preprocessing="as stored in the source files (prepared batch by batch when used)",
    )
    return Split(split, torch.from_numpy(images), torch.from_numpy(labels), params, meta)
