"""Simulated datasets: split counts, per-block seeds, chunked writing, and ``ensure_simulated``.

Images are simulated in blocks of ``block_size`` images; block ``k`` of split ``s`` gets its own
``torch.Generator`` seeded from ``(seed, s, k)``, so a block can be re-simulated alone (residual
plots) and the dataset does not depend on how many blocks are written at once. The last block of
a split is padded so every simulator call of a split has the same shape; a split smaller than
``block_size`` is one block of its own size (no padding work wasted). The labels of a
split are a seeded permutation of ``n_per_class`` copies of each class, independent of the block
size; images do depend on ``block_size``, which meta.json records.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tuner.data.store import (
    SPLITS,
    DatasetError,
    DatasetMeta,
    SplitWriter,
    combine_digests,
    package_version,
    read_meta,
    staged_dataset,
    write_meta,
)

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)
DEFAULT_BLOCK_SIZE = 128
# "auto" compiles the simulator when the dataset has at least this many pixels (images x H x W):
# compiling costs a few seconds per class and saves ~0.45-2 ms per 150 px image and
# ~0.05-0.25 ms per 64 px image on one CPU core (bench/results/simulate.md), so it pays from
# roughly 10k images at 150 px or 50k at 64 px.
AUTO_COMPILE_MIN_PIXELS = 2 * 10**8
COMPILE_CHOICES = ("auto", "yes", "no")


def split_counts(
    n_per_class: int,
    fractions: Sequence[float] | None = None,
    counts: Sequence[int] | None = None,
) -> dict[str, int]:
    """Images per class in each split, from fractions of ``n_per_class`` or explicit counts.

    With fractions (train, val, test) summing to 1, val and test are rounded and train takes the
    rest. Every split needs at least one image per class. DatasetError on bad values.
    """
    if counts is not None:
        if fractions is not None:
            raise DatasetError("give split fractions or split counts, not both")
        if len(counts) != len(SPLITS) or any(int(c) < 1 for c in counts):
            raise DatasetError(f"split counts must be {len(SPLITS)} integers >= 1 (train val test), got {list(counts)}")
        return {split: int(c) for split, c in zip(SPLITS, counts)}
    if n_per_class < len(SPLITS):
        raise DatasetError(f"n_per_class must be >= {len(SPLITS)} (one per split), got {n_per_class}")
    fractions = DEFAULT_FRACTIONS if fractions is None else tuple(float(f) for f in fractions)
    if len(fractions) != len(SPLITS) or any(not 0 <= f <= 1 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise DatasetError(
            f"split fractions must be {len(SPLITS)} numbers in [0, 1] summing to 1 (train val test), "
            f"got {list(fractions)}"
        )
    val = round(fractions[1] * n_per_class)
    test = round(fractions[2] * n_per_class)
    result = {"train": n_per_class - val - test, "val": val, "test": test}
    empty = [split for split, c in result.items() if c < 1]
    if empty:
        raise DatasetError(
            f"n_per_class {n_per_class} with fractions {list(fractions)} leaves no images in {empty}; "
            "use more images or larger fractions"
        )
    return result


def block_seed(seed: int, split: str, block: int) -> int:
    """Seed (0 <= s < 2**63) of the generator for block ``block`` of ``split``."""
    state = np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), block)).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def effective_block_size(block_size: int, n_split: int) -> int:
    """Images per simulator call in a split of ``n_split`` images: ``block_size`` at most."""
    return max(1, min(block_size, n_split))


def split_labels(seed: int, split: str, n_per_class: int, n_classes: int) -> np.ndarray:
    """Seeded permutation of ``n_per_class`` copies of each label: int64 (n_classes * n_per_class,)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split),)))
    return rng.permutation(np.repeat(np.arange(n_classes, dtype=np.int64), n_per_class))


def _resize(images: torch.Tensor, size: int, renormalize: bool) -> torch.Tensor:
    """Area-average (B, 1, H, W) to (B, 1, size, size); optionally min-max each image to [0, 1]."""
    if images.shape[-1] == size:
        return images
    out = F.interpolate(images, size=(size, size), mode="area")
    if renormalize:
        lo = out.amin(dim=(1, 2, 3), keepdim=True)
        hi = out.amax(dim=(1, 2, 3), keepdim=True)
        out = (out - lo) / (hi - lo).clamp_min(torch.finfo(out.dtype).tiny)
    return out


def simulate_block(
    backend: ModuleType | Any,
    preset: str,
    labels: np.ndarray,
    *,
    seed: int,
    block_size: int,
    device: str = "cpu",
    img_size: int | None = None,
    substructure: bool = True,
    noise: bool = True,
    normalize: bool = True,
    compiled: bool = False,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Simulate one block: images float32 (b, 1, S, S) and params name -> (b,) for ``labels`` (b,).

    Labels are padded to ``block_size`` (the simulator always sees the same shape) and the padding
    dropped. ``backend`` provides ``simulate_batch`` (contract of ``tuner.lensing``); ``compiled``
    selects its ``torch.compile`` path (same draws, float32 rounding differs from eager).
    """
    b = len(labels)
    if b > block_size:
        raise DatasetError(f"block of {b} labels exceeds block_size {block_size}")
    n_classes = len(backend.CLASS_NAMES)
    padded = np.concatenate([labels, np.arange(block_size - b) % n_classes]).astype(np.int64)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    images, params = backend.simulate_batch(
        preset,
        torch.from_numpy(padded).to(device),
        generator=generator,
        device=device,
        dtype=torch.float32,
        substructure=substructure,
        noise=noise,
        normalize=normalize,
        **({"compiled": True} if compiled else {}),  # backends without a compiled path stay usable
    )
    if img_size is not None:
        images = _resize(images, img_size, renormalize=normalize)
    out_params = {key: value[:b].detach().cpu().numpy() for key, value in params.items()}
    return images[:b].detach().to("cpu", torch.float32).numpy(), out_params


def check_device(device: str) -> str:
    """Validate a torch device name; DatasetError if it is unknown or unavailable."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DatasetError(f"unknown device {device!r}; allowed: cpu, cuda, cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DatasetError(f"device {device!r} requested but CUDA is not available here; allowed: cpu")
    if dev.type not in ("cpu", "cuda"):
        raise DatasetError(f"device {device!r} not supported; allowed: cpu, cuda, cuda:N")
    return device


def resolve_compile(compile: bool | str | None, n_images: int, image_size: int) -> bool:
    """Whether to use the compiled simulator: True/"yes", False/"no", or None/"auto" (compile
    when the dataset has at least AUTO_COMPILE_MIN_PIXELS pixels). DatasetError otherwise."""
    if isinstance(compile, bool):
        return compile
    if compile is None or compile == "auto":
        return n_images * image_size * image_size >= AUTO_COMPILE_MIN_PIXELS
    if compile in ("yes", "no"):
        return compile == "yes"
    raise DatasetError(f"compile must be true, false or one of {', '.join(COMPILE_CHOICES)}; got {compile!r}")


def default_backend() -> ModuleType:
    """The lensing simulator package (imported on first use, not at import of this module)."""
    import tuner.lensing

    return tuner.lensing


def simulate_dataset(
    root: str | Path,
    preset: str,
    counts: Mapping[str, int],
    *,
    seed: int = 0,
    device: str = "cpu",
    img_size: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    force: bool = False,
    progress: bool = False,
    backend: ModuleType | Any | None = None,
    compile: bool | str | None = "auto",
) -> DatasetMeta:
    """Simulate ``counts[split]`` images per class for every split and write the store at ``root``.

    Written into a temporary folder beside ``root`` block by block (memory-mapped, never the whole
    dataset in memory) and renamed into place at the end. Same arguments (``compile`` resolved
    alike, see :func:`resolve_compile`) on the same device give bitwise identical arrays; the
    compiled and eager simulators agree to float32 rounding. Returns the dataset's meta.
    """
    backend = backend or default_backend()
    backend.get_preset(preset)  # ValueError naming the allowed presets
    check_device(device)
    if seed < 0:
        raise DatasetError(f"seed must be >= 0, got {seed}")
    if block_size < 1:
        raise DatasetError(f"block/batch size must be >= 1, got {block_size}")
    if img_size is not None and img_size < 8:
        raise DatasetError(f"img_size must be >= 8 pixels, got {img_size}")
    class_names = tuple(backend.CLASS_NAMES)
    n_classes = len(class_names)
    total = n_classes * sum(counts[s] for s in SPLITS)
    if compile not in (True, False, None, *COMPILE_CHOICES):
        resolve_compile(compile, 0, 0)  # raises, naming the allowed values
    digests: dict[str, str] = {}
    param_names: tuple[str, ...] = ()
    native: int | None = None
    if img_size is not None:
        native = native_image_size(backend, preset, device)
        if img_size > native:
            raise DatasetError(f"img_size {img_size} exceeds preset {preset}'s {native} px; allowed: 8..{native}")
    if native is None and compile in (None, "auto"):
        native = native_image_size(backend, preset, device)
    compiled = resolve_compile(compile, total, native or 0)
    with staged_dataset(root, force=force) as tmp, tqdm(
        total=total, unit="img", desc=f"simulate {preset}", file=sys.stderr, disable=not progress
    ) as bar:
        for split in SPLITS:
            labels = split_labels(seed, split, counts[split], n_classes)
            writer: SplitWriter | None = None
            size = effective_block_size(block_size, len(labels))
            for block, start in enumerate(range(0, len(labels), size)):
                block_labels = labels[start : start + size]
                bseed = block_seed(seed, split, block)
                images, params = simulate_block(
                    backend, preset, block_labels, seed=bseed, block_size=size,
                    device=device, img_size=img_size, compiled=compiled,
                )
                if writer is None:
                    native = native or int(images.shape[-1])
                    writer = SplitWriter(tmp / split, len(labels), int(images.shape[-1]))
                params["sim_seed"] = np.full(len(block_labels), bseed, dtype=np.int64)
                params["sim_index"] = np.arange(len(block_labels), dtype=np.int64)
                writer.write(start, images, block_labels, params)
                bar.update(len(block_labels))
            assert writer is not None
            param_names = writer.param_names
            digests[split] = writer.close()
        meta = DatasetMeta(
            source="simulated",
            preset=preset,
            seed=seed,
            class_names=class_names,
            image_size=img_size or native,
            counts={s: {name: counts[s] for name in class_names} for s in SPLITS},
            param_names=param_names,
            digest=combine_digests(digests),
            split_digests=digests,
            version=package_version(),
            device=str(device),
            block_size=block_size,
            native_image_size=native,
            compiled=compiled,
        )
        write_meta(tmp, meta)
    return meta


def native_image_size(backend: Any, preset: str, device: str = "cpu") -> int:
    """The preset's own image size in pixels, from one simulated image."""
    probe, _ = simulate_block(backend, preset, np.zeros(1, dtype=np.int64), seed=0, block_size=1, device=device)
    return int(probe.shape[-1])


def ensure_simulated(
    root: str | Path,
    preset: str,
    n_per_class: int,
    seed: int = 0,
    device: str = "cpu",
    img_size: int | None = None,
    *,
    progress: bool = False,
    backend: ModuleType | Any | None = None,
    compile: bool | str | None = "auto",
) -> Path:
    """Return ``root`` if it holds the dataset these arguments describe, else simulate it there.

    Splits use the default fractions of ``n_per_class``. ``compile`` picks the simulator path for
    a new dataset (:func:`resolve_compile`); an existing dataset matches whichever path made it. A different dataset already at ``root``
    is never overwritten: DatasetError says what differs. Safe against a concurrent writer of the
    same dataset (the loser of the final rename re-checks and returns).
    """
    root = Path(root)
    counts = split_counts(n_per_class)
    if (root / "meta.json").exists():
        _check_matches(root, preset, counts, seed, img_size)
        return root
    try:
        simulate_dataset(
            root, preset, counts, seed=seed, device=device, img_size=img_size, progress=progress, backend=backend,
            compile=compile,
        )
    except (DatasetError, OSError):
        if not (root / "meta.json").exists():
            raise
        _check_matches(root, preset, counts, seed, img_size)
    return root


def _check_matches(root: Path, preset: str, counts: dict[str, int], seed: int, img_size: int | None) -> None:
    meta = read_meta(root)
    want_size = img_size if img_size is not None else meta.native_image_size
    found = {
        "source": meta.source,
        "preset": meta.preset,
        "seed": meta.seed,
        "image_size": meta.image_size,
        "per-class counts": {s: sorted(set(meta.counts[s].values())) for s in SPLITS},
    }
    wanted = {
        "source": "simulated",
        "preset": preset,
        "seed": seed,
        "image_size": want_size,
        "per-class counts": {s: [counts[s]] for s in SPLITS},
    }
    diff = [f"{key}: found {found[key]}, wanted {wanted[key]}" for key in wanted if found[key] != wanted[key]]
    if diff:
        raise DatasetError(
            f"{root} holds a different dataset ({'; '.join(diff)}); choose another folder or remove it"
        )
