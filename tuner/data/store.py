"""On-disk dataset store: layout, metadata, content digest, and memory-mapped loading.

Layout of a dataset folder ``<root>``::

    meta.json                 DatasetMeta (preset, seed, class names, counts, digests, ...)
    <split>/images.npy        float32 (N, 1, H, W)
    <split>/labels.npy        int64 (N,), index into meta.class_names
    <split>/params.npz        per-image parameters, each array of shape (N,)

for each split in ``SPLITS``. The digest is a SHA-256 over the arrays' dtype, shape and bytes
(not the file bytes, which depend on the numpy version and zip timestamps), so two datasets
with the same digest hold the same numbers.

:func:`verify_dataset` checks a whole dataset before training: every split's digest recomputed
from the memory-mapped files, no NaN/inf pixels, damaged or truncated files named. A hidden
``<root>/.verified.json`` marker (file sizes, mtimes, inodes) lets repeats skip the hashing.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from tuner.data.staging import staged_folder

SPLITS: tuple[str, ...] = ("train", "val", "test")
ARRAY_FILES: tuple[str, ...] = ("images.npy", "labels.npy", "params.npz")
META_FILE = "meta.json"
# Written by verify_dataset after a full check: the size, mtime and inode of every file it
# hashed, so a repeat with unchanged files skips the hashing (hidden: not part of the dataset).
VERIFIED_FILE = ".verified.json"
_MARKER_FORMAT = 1
FORMAT_VERSION = 1
# Bytes hashed per step: bounds memory while digesting datasets larger than RAM.
_DIGEST_BYTES = 16 * 2**20


class DatasetError(ValueError):
    """Missing, corrupt or inconsistent dataset; the message names the file and what is wrong."""


class DatasetMeta(BaseModel):
    """Contents of ``meta.json``.

    ``counts[split][class_name]`` is the number of images; ``image_size`` is H = W in pixels.
    ``split_digests`` hold one SHA-256 per split, ``digest`` the SHA-256 over them in SPLITS order.
    ``block_size`` and ``native_image_size`` are set for simulated data: images were simulated in
    blocks of ``block_size`` (one generator per block) at the preset's ``native_image_size`` and
    resized to ``image_size`` when they differ. ``compiled``: whether the simulator ran under
    ``torch.compile`` (its images agree with eager ones to ~1e-4, not bitwise).
    ``preprocessing`` says how the stored images were prepared: the preparation's name
    (``tuner.data.preprocess.METHOD``) for simulated data; for imported data, that they are
    stored as the files held them (a network's batches are prepared by the same preparation).
    ``conditions``: the observing-condition ranges the images were simulated with
    (``tuner.lensing.conditions.ObservingConditions`` as a mapping); None for the preset's own.
    ``shift``: set on a shifted evaluation set (``tuner.robustness``): its name, kind,
    severity, the base dataset's digest and split, and how it was derived.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format_version: int = FORMAT_VERSION
    source: Literal["simulated", "deeplense"]
    preset: str | None
    seed: int | None
    class_names: tuple[str, ...]
    image_size: int
    counts: dict[str, dict[str, int]]
    param_names: tuple[str, ...]
    digest: str
    split_digests: dict[str, str]
    version: str
    device: str | None = None
    block_size: int | None = None
    native_image_size: int | None = None
    compiled: bool | None = None
    source_path: str | None = None
    preprocessing: str | None = None  # how the stored images were prepared (tuner/data/preprocess.py)
    conditions: dict | None = None
    shift: dict | None = None

    def n_images(self, split: str) -> int:
        """Total number of images in ``split``."""
        return sum(self.counts[split].values())


@dataclass(frozen=True)
class Split:
    """One loaded split. ``images`` (N, 1, H, W) float32 is memory-mapped (copy-on-write, the
    file is never modified); ``labels`` (N,) int64; ``params`` name -> (N,) array."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    params: dict[str, np.ndarray]
    meta: DatasetMeta

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def package_version() -> str:
    """Installed lenstune version, recorded in every dataset's meta."""
    from tuner import __version__

    return __version__


# ---------------------------------------------------------------- digest


def _hash_array(h: "hashlib._Hash", name: str, array: np.ndarray,
                on_chunk: Callable[[int, np.ndarray], None] | None = None) -> None:
    """Feed name, dtype, shape and C-order bytes of ``array`` into ``h`` in row chunks.

    ``on_chunk(start, rows)`` (optional) sees each chunk of rows as it is hashed, so a caller can
    check the values in the same pass over the (mapped) pages; it does not change the digest.
    """
    header = json.dumps([name, array.dtype.str, list(array.shape)]).encode()
    h.update(len(header).to_bytes(8, "little") + header)
    if array.ndim == 0 or array.shape[0] == 0:
        h.update(np.ascontiguousarray(array).tobytes())
        return
    row_bytes = max(1, array[:1].nbytes)
    rows = max(1, _DIGEST_BYTES // row_bytes)
    for start in range(0, array.shape[0], rows):
        # memoryview of a contiguous slice: hashed straight from the (mapped) pages, no copy
        chunk = np.ascontiguousarray(array[start : start + rows])
        h.update(memoryview(chunk).cast("B"))
        if on_chunk is not None:
            on_chunk(start, chunk)


def split_digest(images: np.ndarray, labels: np.ndarray, params: dict[str, np.ndarray], *,
                 on_images: Callable[[int, np.ndarray], None] | None = None) -> str:
    """SHA-256 (hex) over a split's arrays; params in sorted name order. ``on_images(start,
    rows)`` sees the images chunk by chunk as they are hashed (see :func:`_hash_array`)."""
    h = hashlib.sha256()
    _hash_array(h, "images", images, on_images)
    _hash_array(h, "labels", labels)
    for key in sorted(params):
        _hash_array(h, f"params/{key}", params[key])
    return h.hexdigest()


def combine_digests(split_digests: dict[str, str]) -> str:
    """The dataset digest: SHA-256 over the per-split digests in SPLITS order (the splits it
    holds: a shifted evaluation set holds one)."""
    h = hashlib.sha256()
    for split in (s for s in SPLITS if s in split_digests):
        h.update(f"{split}:{split_digests[split]};".encode())
    return h.hexdigest()


# ---------------------------------------------------------------- reading


def read_meta(root: str | Path, *, splits: tuple[str, ...] = SPLITS) -> DatasetMeta:
    """Read and validate ``<root>/meta.json``; DatasetError if missing or malformed, or if it
    lacks one of ``splits`` (a shifted evaluation set holds one split only)."""
    path = Path(root) / META_FILE
    if not path.is_file():
        raise DatasetError(f"no dataset at {Path(root)}: {path} does not exist")
    try:
        meta = DatasetMeta.model_validate_json(path.read_text())
    except (ValidationError, UnicodeDecodeError, OSError) as exc:
        raise DatasetError(f"{path} is not a valid lenstune dataset meta file: {exc}") from exc
    if meta.format_version != FORMAT_VERSION:
        raise DatasetError(
            f"{path}: format_version {meta.format_version} is not supported (allowed: {FORMAT_VERSION})"
        )
    missing = [s for s in splits if s not in meta.counts or s not in meta.split_digests]
    if missing:
        raise DatasetError(f"{path}: splits {missing} missing from counts/split_digests")
    return meta


_REMAKE = ("re-simulate the dataset (lenstune simulate ... --force) or re-import it "
           "(lenstune import-deeplense ... --force)")


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and data offset of a ``.npy`` file, and that the file holds all the data its
    header announces; DatasetError naming the file for a damaged header or short data."""
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
            offset = handle.tell()
            size = os.fstat(handle.fileno()).st_size
    except OSError as exc:
        raise DatasetError(f"cannot read array file {path}: {exc}") from exc
    except Exception as exc:  # numpy raises ValueError, SyntaxError, tokenize.TokenError, ...
        raise DatasetError(
            f"corrupt array file {path}: its .npy header cannot be read "
            f"({type(exc).__name__}: {exc}); {_REMAKE}"
        ) from exc
    if dtype.hasobject:
        raise DatasetError(f"corrupt array file {path}: holds Python objects ({dtype}), "
                           f"not numbers; {_REMAKE}")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size < expected:
        raise DatasetError(
            f"corrupt array file {path}: truncated, {size} bytes where its header "
            f"({dtype.str} {tuple(shape)}) needs {expected}; {_REMAKE}"
        )
    return tuple(shape), dtype, offset


def _load_npy(path: Path, mmap: bool | str) -> np.ndarray:
    """An array file, memory-mapped (``mmap``: True or "c" copy-on-write, "r" read-only) or read;
    DatasetError naming the file when it is missing, damaged or truncated."""
    if not path.is_file():
        raise DatasetError(f"missing file {path}")
    _npy_header(path)
    mode = ("c" if mmap is True else mmap) or None
    try:
        # Copy-on-write mapping: tensors built on it are writable without touching the file.
        return np.load(path, mmap_mode=mode, allow_pickle=False)
    except Exception as exc:  # header checked above; whatever is left is a damaged file
        raise DatasetError(f"corrupt array file {path}: {type(exc).__name__}: {exc}") from exc


def _load_params(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DatasetError(f"missing file {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except OSError as exc:
        raise DatasetError(f"cannot read parameter file {path}: {exc}") from exc
    except Exception as exc:  # BadZipFile, bad CRC, a damaged member's header, ...
        raise DatasetError(
            f"corrupt parameter file {path}: {type(exc).__name__}: {exc}; {_REMAKE}"
        ) from exc


def _open_split(root: Path, meta: DatasetMeta, split: str, mmap: bool | str
                ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """A split's images (memory-mapped), labels and params, checked against ``meta``: dtypes,
    shapes (N, 1, H, W) with H = W = meta.image_size, labels in range, per-class counts."""
    folder = root / split
    images = _load_npy(folder / "images.npy", mmap=mmap)
    labels = _load_npy(folder / "labels.npy", mmap=False)
    params = _load_params(folder / "params.npz")

    n = meta.n_images(split)
    size = meta.image_size
    if images.dtype != np.float32 or images.shape != (n, 1, size, size):
        raise DatasetError(
            f"{folder / 'images.npy'}: expected float32 {(n, 1, size, size)}, "
            f"found {images.dtype} {images.shape}"
        )
    if labels.dtype != np.int64 or labels.shape != (n,):
        raise DatasetError(
            f"{folder / 'labels.npy'}: expected int64 ({n},), found {labels.dtype} {labels.shape}"
        )
    n_classes = len(meta.class_names)
    if n and (labels.min() < 0 or labels.max() >= n_classes):
        raise DatasetError(
            f"{folder / 'labels.npy'}: labels must lie in [0, {n_classes - 1}], "
            f"found [{labels.min()}, {labels.max()}]"
        )
    found = np.bincount(labels, minlength=n_classes)
    expected = [meta.counts[split].get(name, 0) for name in meta.class_names]
    if found.tolist() != expected:
        raise DatasetError(
            f"{folder / 'labels.npy'}: per-class counts {found.tolist()} differ from meta.json {expected}"
        )
    for key, value in params.items():
        if value.shape != (n,):
            raise DatasetError(
                f"{folder / 'params.npz'}: parameter {key!r} has shape {value.shape}, expected ({n},)"
            )
    return images, labels, params


class _FiniteCheck:
    """``on_images`` hook of :func:`split_digest`: remembers the first image holding a NaN or
    infinite pixel. min and max propagate NaN and expose inf, so a clean chunk costs two
    reductions and no temporary array."""

    def __init__(self) -> None:
        self.first_bad: int | None = None

    def __call__(self, start: int, rows: np.ndarray) -> None:
        if self.first_bad is not None or rows.size == 0:
            return
        if np.isfinite(rows.min()) and np.isfinite(rows.max()):
            return
        bad = ~np.isfinite(rows.reshape(len(rows), -1)).all(axis=1)
        self.first_bad = start + int(np.flatnonzero(bad)[0])


def _check_split_content(root: Path, meta: DatasetMeta, split: str, images: np.ndarray,
                         labels: np.ndarray, params: dict[str, np.ndarray],
                         changed: list[str] | None = None) -> None:
    """Recompute the split's digest (one streamed pass over the mapped images, which also looks
    for non-finite pixels) and compare it with meta.json; DatasetError naming split and files.
    ``changed``: files of the split known to have changed since an earlier verification."""
    folder = root / split
    finite = _FiniteCheck()
    digest = split_digest(images, labels, params, on_images=finite)
    if digest != meta.split_digests[split]:
        files = (f"changed since it was last verified: {', '.join(changed)}" if changed else
                 ", ".join(str(folder / name) for name in ARRAY_FILES))
        raise DatasetError(
            f"dataset {root}: split {split!r} changed since it was written: content digest "
            f"{digest[:16]}... does not match meta.json {meta.split_digests[split][:16]}... "
            f"(files {files}); the data is modified or corrupt: {_REMAKE}"
        )
    if finite.first_bad is not None:
        raise DatasetError(
            f"{folder / 'images.npy'}: split {split!r} holds NaN or infinite pixels (first in "
            f"image {finite.first_bad}); a network cannot train on them: fix the source images and "
            f"re-import them, or re-simulate the dataset"
        )


def load_split(root: str | Path, split: str, *, verify: bool = False) -> Split:
    """Memory-map one split of the dataset at ``root`` and validate it against ``meta.json``.

    Checks dtypes, shapes (N, 1, H, W) with H = W = meta.image_size, labels in range and
    per-class counts. ``verify=True`` also recomputes the split's digest (reads every byte) and
    refuses NaN or infinite pixels (:func:`verify_dataset` does this for every split, once).
    Raises DatasetError naming the file and the problem.
    """
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    root = Path(root)
    meta = read_meta(root, splits=(split,))
    images, labels, params = _open_split(root, meta, split, mmap="c")
    if verify:
        _check_split_content(root, meta, split, images, labels, params)
    return Split(split, torch.from_numpy(images), torch.from_numpy(labels), params, meta)


# ---------------------------------------------------------------- verification


def _dataset_files(root: Path) -> list[str]:
    return [META_FILE] + [f"{split}/{name}" for split in SPLITS for name in ARRAY_FILES]


def _file_stats(root: Path, files: list[str]) -> dict[str, list[int]] | None:
    """size, mtime_ns and inode of each file; None when one cannot be stat'ed (the full check
    then names it)."""
    stats = {}
    for rel in files:
        try:
            st = os.stat(root / rel)
        except OSError:
            return None
        stats[rel] = [st.st_size, st.st_mtime_ns, st.st_ino]
    return stats


def _read_marker(root: Path) -> dict | None:
    try:
        marker = json.loads((root / VERIFIED_FILE).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("format") == _MARKER_FORMAT else None


def _write_marker(root: Path, marker: dict) -> bool:
    """Write the marker atomically; False (and nothing written) where the dataset folder is
    read-only or full: verification then simply runs in full next time."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{VERIFIED_FILE}.", dir=root)
        with os.fdopen(fd, "w") as handle:
            json.dump(marker, handle, indent=1, sort_keys=True)
        os.replace(tmp, root / VERIFIED_FILE)
        return True
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        return False


def verify_dataset(root: str | Path, *, use_marker: bool = True) -> DatasetMeta:
    """Check that the dataset at ``root`` holds what was written; returns its meta.

    For every split: the files open (a damaged ``.npy`` header, truncated data or a broken
    ``params.npz`` raise DatasetError naming the file), dtypes, shapes, labels and counts agree
    with ``meta.json``, the content digest recomputed exactly as the writer computed it
    (:func:`split_digest`, streamed over the memory-mapped images in 16 MiB steps) equals
    ``meta.json``'s (otherwise the split changed since it was written), and no image holds a NaN
    or infinite pixel (the message names the first such image).

    After a full check a marker ``<root>/.verified.json`` records the dataset digest and the size,
    mtime_ns and inode of every file; while they are unchanged later calls skip the hashing
    (``use_marker=False`` forces the full check, which rewrites the marker). Touching,
    rewriting or copying a file invalidates it. Where the marker cannot be written (read-only
    dataset) every call checks in full.
    """
    root = Path(root)
    meta = read_meta(root)
    files = _dataset_files(root)
    before = _file_stats(root, files)
    marker = _read_marker(root) if use_marker else None
    if (marker is not None and before is not None and marker.get("digest") == meta.digest
            and marker.get("split_digests") == meta.split_digests
            and marker.get("files") == before):
        return meta
    # files whose size/mtime/inode moved since the last verification: named if a split fails
    previous = (marker.get("files") if marker is not None and marker.get("digest") == meta.digest
                and isinstance(marker.get("files"), dict) else {})
    for split in SPLITS:
        images, labels, params = _open_split(root, meta, split, mmap="r")
        changed = [str(root / split / name) for name in ARRAY_FILES
                   if previous.get(f"{split}/{name}") not in (None, (before or {}).get(f"{split}/{name}"))]
        _check_split_content(root, meta, split, images, labels, params, changed=changed)
        del images  # unmap before the next split
    if before is not None and _file_stats(root, files) == before:
        _write_marker(root, {"format": _MARKER_FORMAT, "digest": meta.digest,
                             "split_digests": meta.split_digests, "files": before})
    return meta


# ---------------------------------------------------------------- writing


class SplitWriter:
    """Writes one split into a (temporary) dataset folder, images in chunks via a memory map.

    ``images`` is an ``np.lib.format.open_memmap`` of shape (n, 1, size, size): callers fill
    rows ``[start, stop)`` with ``write`` and the memory map pages them out, so the whole split
    is never in memory. Labels and params (a few numbers per image) stay in memory.
    """

    def __init__(self, folder: Path, n: int, image_size: int):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.n = n
        self.images = np.lib.format.open_memmap(
            folder / "images.npy", mode="w+", dtype=np.float32, shape=(n, 1, image_size, image_size)
        )
        self.labels = np.zeros(n, dtype=np.int64)
        # Numbers go straight into preallocated (n,) arrays: many small per-block arrays kept
        # alive between large freed image buffers fragment the heap and grow memory with n.
        self.params: dict[str, np.ndarray] = {}
        self._filled: dict[str, int] = {}
        self._text: dict[str, list[tuple[int, np.ndarray]]] = {}

    def write(self, start: int, images: np.ndarray, labels: np.ndarray, params: dict[str, np.ndarray]) -> None:
        """Store rows ``[start, start + len(images))``; images (b, 1, H, W), labels (b,)."""
        stop = start + images.shape[0]
        self.images[start:stop] = images
        self.labels[start:stop] = labels
        for key, value in params.items():
            value = np.asarray(value)
            if value.dtype.kind in "USO":  # text widths vary between rows: join at close
                self._text.setdefault(key, []).append((start, value))
                continue
            if key not in self.params:
                self.params[key] = np.zeros(self.n, dtype=value.dtype)
            self.params[key][start:stop] = value
            self._filled[key] = self._filled.get(key, 0) + len(value)

    @property
    def param_names(self) -> tuple[str, ...]:
        """Sorted names of the parameters written so far."""
        return tuple(sorted(set(self.params) | set(self._text)))

    def close(self) -> str:
        """Flush everything to disk and return the split digest."""
        self.images.flush()
        params = dict(self.params)
        for key, parts in self._text.items():
            parts.sort(key=lambda part: part[0])
            params[key] = np.concatenate([p for _, p in parts]).astype(str)
            self._filled[key] = params[key].shape[0]
        for key in params:
            if self._filled[key] != self.n:
                raise DatasetError(f"parameter {key!r} covers {self._filled[key]} of {self.n} images")
        np.save(self.folder / "labels.npy", self.labels)
        np.savez(self.folder / "params.npz", **params)
        digest = split_digest(self.images, self.labels, params)
        del self.images  # close the memory map before the folder is renamed
        return digest


# Fields added to format 1 later: written only when set, so a dataset without them keeps the
# meta.json it had before they existed.
_OPTIONAL_FIELDS = ("conditions", "shift")


def write_meta(folder: Path, meta: DatasetMeta) -> None:
    """Write ``meta.json`` (sorted keys so identical datasets give identical files)."""
    data = meta.model_dump(mode="json")
    for key in _OPTIONAL_FIELDS:
        if data[key] is None:
            del data[key]
    text = json.dumps(data, indent=2, sort_keys=True)
    (folder / META_FILE).write_text(text + "\n")


@contextmanager
def staged_dataset(root: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``root``; on success move it to ``root``
    (:func:`tuner.data.staging.staged_folder`).

    Refuses (DatasetError) if ``root`` exists and ``force`` is False, and anything but a
    lenstune dataset or an empty folder even with ``force``. With ``force`` an existing dataset
    is replaced by two renames (old aside, new in place), so readers see either the old or the
    new dataset, never a mix. On any exception ``root`` is left as it was.
    """
    with staged_folder(root, force=force, replaceable=lambda p: (p / META_FILE).is_file(),
                       kind=f"a lenstune dataset (no {META_FILE})",
                       force_hint="--force (force=True)", error=DatasetError) as tmp:
        yield tmp


def write_error_message(out: str | Path, exc: Exception) -> str:
    """One line for a failed dataset write: a DatasetError or ValueError as it is; an OSError
    (``out`` below a file, no permission, disk full, an unreadable source) with the path it
    hit. Writes are staged, so nothing is left at ``out`` either way."""
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}: {exc.filename or out}; nothing was written to {out}"
    return str(exc)
