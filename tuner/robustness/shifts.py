"""The shift suite: a dataset's own systems observed under other conditions, stored once.

Each shift re-simulates the systems of one split of a simulated dataset (same block seeds,
block size, labels and preset, so the same lenses, subhalos, sources and noise normals) under
fixed observing conditions, or through another telescope, and prepares the images exactly as
the dataset writer did (``tuner/data/preprocess.py``). Because the condition draws come after
every other draw (docs/physics.md), image i of a shifted set is image i of the base split
observed differently: ``params["base_index"]`` names it.

Stored under ``<dataset>/shifts/<split>/<name>/`` (``<split>-first<k>`` when capped at ``k``
images per class) in the store format with one split: ``meta.json`` (a DatasetMeta whose
``shift`` says what it is and of which dataset) and ``<split>/{images.npy,labels.npy,
params.npz}``. ``tuner.data.load_split(path, split)`` or :func:`load_shift` reads it. Written
atomically (staged folder, renamed into place), re-used while its definition and the base
dataset's digest are unchanged, bitwise reproducible on the CPU. The dataset's own
verification (``verify_dataset``) does not look into ``shifts/``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from tuner.data.deeplense import read_deeplense_split
from tuner.data.preprocess import METHOD as PREPARATION
from tuner.data.simulate import (
    block_seed,
    check_device,
    default_backend,
    effective_block_size,
    resolve_compile,
    simulate_block,
)
from tuner.data.store import (
    SPLITS,
    DatasetError,
    DatasetMeta,
    Split,
    SplitWriter,
    combine_digests,
    load_split,
    package_version,
    read_meta,
    staged_dataset,
    write_meta,
)
from tuner.lensing.conditions import ObservingConditions
from tuner.lensing.presets import get_preset, with_instrument
from tuner.progress import progress as progress_bar

# Bump when a definition or the way shifts are simulated changes: stored sets are then rebuilt.
SHIFT_FORMAT = 1
SHIFTS_FOLDER = "shifts"


class Shift(BaseModel):
    """One shift: ``kind`` (noise, psf, magnitude, instrument), ``severity`` (a plot's x axis:
    the noise or FWHM factor, the magnitude offset; 1 for another instrument), fixed
    ``conditions`` and, for an instrument shift, the preset whose telescope observes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    kind: Literal["noise", "psf", "magnitude", "instrument"]
    severity: float
    description: str
    conditions: ObservingConditions = ObservingConditions()
    instrument: str | None = None

    def definition(self) -> dict:
        """What identifies the stored set's content (recorded in its meta.json)."""
        return {"name": self.name, "kind": self.kind, "severity": self.severity,
                "conditions": self.conditions.to_dict(), "instrument": self.instrument, "format": SHIFT_FORMAT}


def _noise(s: float) -> Shift:
    return Shift(name=f"noise_x{s:g}", kind="noise", severity=s, conditions=ObservingConditions.fixed(noise_scale=s),
                 description=f"noise rms x {s:g} (exposure / {s * s:g}: depth)")


def _psf(f: float) -> Shift:
    return Shift(name=f"psf_x{f:g}", kind="psf", severity=f, conditions=ObservingConditions.fixed(psf_fwhm_scale=f),
                 description=f"PSF FWHM x {f:g} (seeing)")


def _magnitude(dm: float) -> Shift:
    # "plus"/"minus" rather than a sign: the name is part of MLflow metric names
    # (test_auc_macro.<shift>), which may not hold "+"
    return Shift(name=f"mag_{'plus' if dm > 0 else 'minus'}{abs(dm):g}", kind="magnitude", severity=dm,
                 conditions=ObservingConditions.fixed(source_mag_offset=dm),
                 description=f"source {abs(dm):g} mag {'fainter' if dm > 0 else 'brighter'}")


SHIFTS: dict[str, Shift] = {s.name: s for s in (
    _noise(0.5), _noise(2.0), _noise(4.0),
    _psf(0.75), _psf(1.5),
    _magnitude(+1.0), _magnitude(-1.0),
    Shift(name="instrument_model_iii", kind="instrument", severity=1.0, instrument="model_iii",
          description="Model III's HST-like PSF, noise and source brightness on the dataset's pixel grid"),
)}


def applicable_shifts(preset: str) -> list[str]:
    """Names of SHIFTS that change something for ``preset`` (an instrument shift to the
    preset's own instrument does not)."""
    return [name for name, s in SHIFTS.items() if s.instrument != preset]


def _base_meta(root: Path) -> DatasetMeta:
    meta = read_meta(root)
    if meta.source != "simulated" or meta.preset is None or meta.seed is None or meta.block_size is None:
        raise DatasetError(
            f"{root} holds a dataset imported from DeepLense files (source {meta.source!r}, no preset): it has no "
            "simulated shifts; evaluate on DeepLense-format folders instead (load_deeplense_shift)")
    return meta


def _chosen(names: Sequence[str] | None, preset: str) -> list[str]:
    allowed = applicable_shifts(preset)
    if names is None:
        return allowed
    unknown = [n for n in names if n not in SHIFTS]
    if unknown:
        raise DatasetError(f"unknown shifts {unknown}; allowed: {', '.join(SHIFTS)}")
    own = [n for n in names if n not in allowed]
    if own:
        raise DatasetError(f"shifts {own} observe preset {preset!r} with its own instrument; "
                           f"allowed for it: {', '.join(allowed)}")
    return list(dict.fromkeys(names))


def selected_indices(labels: np.ndarray, n_per_class: int | None, n_classes: int) -> np.ndarray:
    """Indices into a split: all, or the first ``n_per_class`` of each class, in split order."""
    if n_per_class is None:
        return np.arange(len(labels))
    counts = np.bincount(labels, minlength=n_classes)
    if n_per_class < 1 or n_per_class > counts.min():
        raise DatasetError(f"n_per_class {n_per_class}: allowed 1..{int(counts.min())} (images per class in the split)")
    chosen = [np.flatnonzero(labels == c)[:n_per_class] for c in range(n_classes)]
    return np.sort(np.concatenate(chosen))


def shift_folder(root: str | Path, split: str, n_per_class: int | None) -> Path:
    """Where the shifts of ``split`` (capped at ``n_per_class`` per class) are stored."""
    name = split if n_per_class is None else f"{split}-first{n_per_class}"
    return Path(root) / SHIFTS_FOLDER / name


def ensure_shift_suite(
    dataset_root: str | Path,
    *,
    split: str = "test",
    names: Sequence[str] | None = None,
    n_per_class: int | None = None,
    device: str | None = None,
    progress: bool = False,
) -> dict[str, Path]:
    """Simulate (once) and store the shifted versions of ``split`` of a simulated dataset.

    ``names``: shifts of SHIFTS to make (default: every one that applies to the preset), in
    order. ``n_per_class``: only the first that many images of each class of the split (a small
    validation suite). ``device``: where to simulate; default the dataset's own device (the
    CPU where that one is absent). The same systems need the same device type as the dataset
    (CPU and CUDA generators differ): ``meta.shift["paired"]`` says whether they are.
    Returns name -> folder (read it with :func:`load_shift`). DatasetError for a DeepLense
    import (no preset), an unknown split, shift or cap.
    """
    root = Path(dataset_root)
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    meta = _base_meta(root)
    chosen = _chosen(names, meta.preset)
    device = check_device(device or _usable_device(meta.device))
    labels = load_split(root, split).labels.numpy()
    indices = selected_indices(labels, n_per_class, len(meta.class_names))
    folder = shift_folder(root, split, n_per_class)
    out: dict[str, Path] = {}
    for name in chosen:
        target = folder / name
        base = {"base_digest": meta.digest, "base_split": split, "n_per_class": n_per_class}
        if not _is_current(target, split, SHIFTS[name], base):
            try:
                _write_shift(target, meta, SHIFTS[name], split, labels, indices, base, device=device,
                             progress=progress)
            except DatasetError:
                if not _is_current(target, split, SHIFTS[name], base):  # not a concurrent writer's
                    raise
            except OSError as exc:
                raise DatasetError(f"cannot write shift {name!r} into {target}: {exc.strerror or exc}") from exc
        out[name] = target
    return out


def _usable_device(device: str | None) -> str:
    import torch

    if device and torch.device(device).type == "cuda" and torch.cuda.is_available():
        return device
    return "cpu"


def _is_current(target: Path, split: str, shift: Shift, base: dict) -> bool:
    """Whether ``target`` holds this shift of this base split, readable."""
    if not (target / "meta.json").is_file():
        return False
    try:
        meta = read_meta(target, splits=(split,))
        recorded = dict(meta.shift or {})
        if {k: recorded.get(k) for k in (*shift.definition(), *base)} != {**shift.definition(), **base}:
            return False
        load_split(target, split)
    except DatasetError:
        return False
    return True


def _write_shift(target: Path, meta: DatasetMeta, shift: Shift, split: str, labels: np.ndarray, indices: np.ndarray,
                 base: dict, *, device: str, progress: bool) -> None:
    """Simulate the blocks holding ``indices`` under ``shift`` and write the selected rows."""
    backend = default_backend()
    preset = with_instrument(meta.preset, shift.instrument) if shift.instrument else get_preset(meta.preset)
    block_size = effective_block_size(meta.block_size, len(labels))
    img_size = meta.image_size if meta.image_size != meta.native_image_size else None
    compiled = resolve_compile("auto", len(indices), meta.native_image_size or meta.image_size, device)
    blocks = sorted(set((indices // block_size).tolist()))
    paired = (meta.device or "cpu").split(":")[0] == device.split(":")[0]
    with staged_dataset(target, force=target.exists()) as tmp, progress_bar(
        total=len(indices), unit="img", desc=f"shift {shift.name}", enabled=progress
    ) as bar:
        writer = SplitWriter(tmp / split, len(indices), meta.image_size)
        row = 0
        for block in blocks:
            start = block * block_size
            seed = block_seed(meta.seed, split, block)
            images, params = simulate_block(
                backend, preset, labels[start : start + block_size], seed=seed, block_size=block_size, device=device,
                img_size=img_size, compiled=compiled, conditions=shift.conditions)
            take = indices[(indices >= start) & (indices < start + block_size)]
            local = take - start
            extra = {"sim_seed": np.full(len(take), seed, dtype=np.int64), "sim_index": local.astype(np.int64),
                     "base_index": take.astype(np.int64)}
            writer.write(row, images[local], labels[take], {**{k: v[local] for k, v in params.items()}, **extra})
            row += len(take)
            if bar is not None:
                bar.update(len(take))
        digest = writer.close()
        counts = np.bincount(labels[indices], minlength=len(meta.class_names))
        write_meta(tmp, DatasetMeta(
            source="simulated", preset=meta.preset, seed=meta.seed, class_names=meta.class_names,
            image_size=meta.image_size, counts={split: dict(zip(meta.class_names, map(int, counts)))},
            param_names=writer.param_names, digest=combine_digests({split: digest}),
            split_digests={split: digest}, version=package_version(), device=device, block_size=meta.block_size,
            native_image_size=meta.native_image_size, compiled=compiled, preprocessing=PREPARATION,
            conditions=None if shift.conditions.is_default else shift.conditions.to_dict(),
            shift={**shift.definition(), **base, "description": shift.description, "paired": paired,
                   "simulated_preset": preset.name}))


def load_shift(path: str | Path, *, verify: bool = False) -> Split:
    """A stored shifted set (one split) as a Split: images (N, 1, H, W), labels, params
    (with ``base_index`` into the base split); ``verify`` recomputes its digest."""
    path = Path(path)
    meta = read_meta(path, splits=())
    if len(meta.counts) != 1:
        raise DatasetError(f"{path} is not a shifted set (one split); it holds splits {sorted(meta.counts)}")
    return load_split(path, next(iter(meta.counts)), verify=verify)


def load_deeplense_shift(folder: str | Path, *, split: str = "test") -> Split:
    """A user's DeepLense-format folder (``<folder>/<class>/*.npy`` or
    ``<folder>/<split>/<class>/*.npy``) as an in-memory Split, images as stored (prepare them
    like any batch; :func:`tuner.data.deeplense.read_deeplense_split`)."""
    return read_deeplense_split(folder, split=split)


def load_shift_suite(
    dataset_root: str | Path,
    *,
    split: str = "test",
    names: Sequence[str] | None = None,
    n_per_class: int | None = None,
    deeplense: Iterable[str | Path] = (),
    device: str | None = None,
    progress: bool = False,
) -> dict[str, Split]:
    """:func:`ensure_shift_suite` then every set loaded, plus each DeepLense-format folder as
    ``deeplense:<folder name>``, in that order."""
    paths = ensure_shift_suite(dataset_root, split=split, names=names, n_per_class=n_per_class, device=device,
                               progress=progress)
    suite = {name: load_shift(path) for name, path in paths.items()}
    for folder in deeplense:
        suite[f"deeplense:{Path(folder).name}"] = load_deeplense_shift(folder, split=split)
    return suite
