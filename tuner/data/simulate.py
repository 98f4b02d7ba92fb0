"""Simulated datasets: split counts, per-block seeds, chunked writing, and ``ensure_simulated``.

Images are simulated in blocks of ``block_size`` images; block ``k`` of split ``s`` gets its own
``torch.Generator`` seeded from ``(seed, s, k)``, so a block can be re-simulated alone (residual
plots) and the dataset does not depend on how many blocks are written at once. The last block of
a split is padded so every simulator call of a split has the same shape; a split smaller than
``block_size`` is one block of its own size (no padding work wasted). The labels of a
split are a seeded permutation of ``n_per_class`` copies of each class, independent of the block
size; images do depend on ``block_size``, which meta.json records.

Writing is a pipeline shared by every device: the caller's thread queues a block's simulation,
hands the block to :class:`_HostCopies` (on CUDA an asynchronous copy into page-locked buffers;
on the CPU nothing to do) and queues its write; a writer thread (:class:`_BlockWriter`) puts
finished blocks into the memory-mapped arrays while the next block is simulated. On CUDA
nothing in a block waits for the GPU, so its kernels, the previous block's copy and the
writing of the one before overlap. The bytes written do not depend on the pipeline.
"""

from __future__ import annotations

import functools
import math
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from tuner.data.conditions import normalise_conditions, recorded_conditions
from tuner.data.preprocess import METHOD as PREPARATION
from tuner.data.preprocess import prepare_images
from tuner.progress import progress as progress_bar
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
DEFAULT_BLOCK_SIZE = 128  # CPU (and CLI) default; the block size every CPU dataset so far was made with
# CUDA default: a block must give the GPU enough work per kernel and amortise the per-block host
# work (generator, Python, compiled-call overhead). 2048 images of 150 px are 184 MB per float32
# output; the eager path's (B, P) temporaries reach ~2 GB at 150 px, the compiled path far less.
# Fixed rather than derived from free GPU memory: the block size decides every block's draws, so
# it must not change a dataset from one machine to the next.
CUDA_BLOCK_SIZE = 2048
# Finished blocks waiting for the writer thread: bounds host memory (and page-locked buffers,
# one more set than this) when the disk is slower than the simulator.
WRITE_QUEUE_DEPTH = 2
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


def default_block_size(device: str) -> int:
    """Images per block when none is given: CUDA_BLOCK_SIZE on CUDA, DEFAULT_BLOCK_SIZE else."""
    return CUDA_BLOCK_SIZE if torch.device(device).type == "cuda" else DEFAULT_BLOCK_SIZE


def effective_block_size(block_size: int, n_split: int) -> int:
    """Images per simulator call in a split of ``n_split`` images: ``block_size`` at most."""
    return max(1, min(block_size, n_split))


def split_labels(seed: int, split: str, n_per_class: int, n_classes: int) -> np.ndarray:
    """Seeded permutation of ``n_per_class`` copies of each label: int64 (n_classes * n_per_class,)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split),)))
    return rng.permutation(np.repeat(np.arange(n_classes, dtype=np.int64), n_per_class))


def simulate_block_tensors(
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
    conditions: Any = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Simulate one block on ``device``: images float32 (b, 1, S, S) and params name -> (b,)
    for ``labels`` (b,), as tensors where the backend left them (no copy to the host).

    Labels are padded to ``block_size`` (the simulator always sees the same shape) and the padding
    dropped. ``backend`` provides ``simulate_batch`` (contract of ``tuner.lensing``) and gets the
    labels on the CPU, where it can group rows by class without waiting for a GPU; ``compiled``
    selects its ``torch.compile`` path (same draws, float32 rounding differs from eager).
    ``conditions``: observing conditions (``ObservingConditions``), passed on only when not
    the preset's own, so default conditions are the very call made without them.
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
        torch.from_numpy(padded),
        generator=generator,
        device=device,
        dtype=torch.float32,
        substructure=substructure,
        noise=noise,
        normalize=normalize,
        **({"compiled": True} if compiled else {}),  # backends without a compiled path stay usable
        **({"conditions": conditions} if conditions is not None and not conditions.is_default else {}),
    )
    if img_size is not None:
        images = prepare_images(images, img_size, normalize=normalize)
    return images[:b].detach().to(torch.float32), {key: value[:b].detach() for key, value in params.items()}


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
    conditions: Any = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """:func:`simulate_block_tensors` copied to host numpy arrays (waits for the device):
    images float32 (b, 1, S, S), params name -> (b,)."""
    images, params = simulate_block_tensors(
        backend, preset, labels, seed=seed, block_size=block_size, device=device, img_size=img_size,
        substructure=substructure, noise=noise, normalize=normalize, compiled=compiled, conditions=conditions,
    )
    return images.cpu().numpy(), {key: value.cpu().numpy() for key, value in params.items()}


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


def resolve_compile(compile: bool | str | None, n_images: int, image_size: int, device: str = "cpu") -> bool:
    """Whether to use the compiled simulator: True/"yes", False/"no", or None/"auto" (on CUDA
    always; on the CPU when the dataset has at least AUTO_COMPILE_MIN_PIXELS pixels).
    DatasetError otherwise."""
    if isinstance(compile, bool):
        return compile
    if compile is None or compile == "auto":
        # on a GPU eager mode is launch-bound (one kernel per point mass and op): compiling pays
        # from the first blocks
        if torch.device(device).type == "cuda":
            return True
        return n_images * image_size * image_size >= AUTO_COMPILE_MIN_PIXELS
    if compile in ("yes", "no"):
        return compile == "yes"
    raise DatasetError(f"compile must be true, false or one of {', '.join(COMPILE_CHOICES)}; got {compile!r}")


def default_backend() -> ModuleType:
    """The lensing simulator package (imported on first use, not at import of this module)."""
    import tuner.lensing

    return tuner.lensing


class _BlockWriter:
    """Runs write jobs in the order given on one background thread, so blocks are written into
    the memory-mapped arrays while the next ones are simulated.

    At most ``depth`` jobs wait: a disk slower than the simulator holds the simulator back
    instead of letting finished blocks pile up in memory. The first exception of a job stops
    the writing (later jobs only run their ``cleanup``) and is re-raised in the caller at its
    next :meth:`submit`, at :meth:`finish` or when the ``with`` block ends. Leaving the ``with``
    block always joins the thread; after an exception in the caller, waiting jobs are dropped.
    """

    def __init__(self, depth: int = WRITE_QUEUE_DEPTH):
        self._jobs: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._cancelled = threading.Event()
        # daemon: were the caller interrupted before the stop signal was queued, the process
        # could still exit; every normal path joins the thread
        self._thread = threading.Thread(target=self._run, name="lenstune-dataset-writer", daemon=True)

    def __enter__(self) -> _BlockWriter:
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._cancelled.set()
        self._stop()
        if exc_type is None and self._error is not None:
            raise self._error

    def submit(self, job: Callable[[], None], cleanup: Callable[[], None] | None = None) -> None:
        """Queue ``job`` (waits while ``depth`` jobs wait); ``cleanup`` runs after it, also if
        it fails or is dropped. Raises the error of an earlier job."""
        if self._error is not None:
            raise self._error
        self._jobs.put((job, cleanup))

    def finish(self) -> None:
        """Wait until every queued job has run; raises the first job error."""
        self._stop()
        if self._error is not None:
            raise self._error

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)  # room comes: the thread keeps taking jobs, failed or not
            self._thread.join()

    def _run(self) -> None:
        while (item := self._jobs.get()) is not None:
            job, cleanup = item
            try:
                if self._error is None and not self._cancelled.is_set():
                    job()
            except BaseException as exc:  # handed to the caller's thread
                self._error = exc
            finally:
                if cleanup is not None:
                    cleanup()


class _PendingCopy:
    """A block on its way to host memory: :meth:`arrays` waits for it (on CUDA, for the copy's
    event), :meth:`release` hands page-locked buffers back to their pool."""

    def __init__(self, host: list[torch.Tensor], done: Any = None, release: Callable[[], None] | None = None):
        self._host, self._done, self._release = host, done, release

    def arrays(self) -> list[np.ndarray]:
        if self._done is not None:
            self._done.synchronize()
        return [t.numpy() for t in self._host]

    def release(self) -> None:
        if self._release is not None:
            self._release()


class _HostCopies:
    """Brings finished blocks to host memory for the writer thread without the caller waiting.

    On CUDA a block is copied with ``non_blocking=True`` into page-locked buffers on a side
    stream that first waits for the kernels queued so far, so the next block's kernels run while
    this one is copied (a copy into pageable memory would make the caller wait for the GPU).
    Buffer sets (``capacity`` rows each) are recycled through a pool of ``n_buffers``; taking
    one waits until the writer has released one, so page-locked memory stays bounded. On the CPU
    the tensors already are host memory: no copy, no pool.
    """

    def __init__(self, device: str, capacity: int, n_buffers: int = WRITE_QUEUE_DEPTH + 1):
        self._device = torch.device(device)
        self._capacity, self._n_buffers, self._n_made = capacity, n_buffers, 0
        self._free: queue.Queue = queue.Queue()
        self._stream = torch.cuda.Stream(self._device) if self._device.type == "cuda" else None

    def start(self, tensors: list[torch.Tensor]) -> _PendingCopy:
        """Start copying ``tensors`` (each with the block's rows first) to the host."""
        if self._stream is None:
            return _PendingCopy(list(tensors))
        buffers = self._take(tensors)
        self._stream.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(self._stream):
            host = []
            for buffer, t in zip(buffers, tensors):
                host.append(buffer[: t.shape[0]])
                host[-1].copy_(t, non_blocking=True)
                if t.is_cuda:  # the allocator must not hand t's memory to the next block before the copy read it
                    t.record_stream(self._stream)
            done = torch.cuda.Event()
            done.record(self._stream)
        return _PendingCopy(host, done, functools.partial(self._free.put, buffers))

    def _take(self, like: list[torch.Tensor]) -> list[torch.Tensor]:
        """A free buffer set that holds ``like``: from the pool, new while fewer than
        ``n_buffers`` exist, else the next one the writer releases."""
        if self._free.empty() and self._n_made < self._n_buffers:
            self._n_made += 1
            buffers: list[torch.Tensor] = []
        else:
            buffers = self._free.get()
        fits = len(buffers) == len(like) and all(
            b.dtype == t.dtype and b.shape[1:] == t.shape[1:] and b.shape[0] >= t.shape[0]
            for b, t in zip(buffers, like)
        )
        if fits:
            return buffers
        return [torch.empty((self._capacity, *t.shape[1:]), dtype=t.dtype, pin_memory=True) for t in like]


def _write_block(split_writer: SplitWriter, start: int, labels: np.ndarray, names: list[str],
                 pending: _PendingCopy, extra: dict[str, np.ndarray]) -> None:
    """Writer-thread job: one block's images, labels and params into the split's arrays."""
    images, *values = pending.arrays()
    split_writer.write(start, images, labels, {**dict(zip(names, values)), **extra})


def _simulate_split(
    folder: Path, split: str, labels: np.ndarray, *, writer: _BlockWriter, copies: _HostCopies,
    backend: Any, preset: str, seed: int, block_size: int, device: str, img_size: int | None, compiled: bool,
    bar: tqdm | None = None, conditions: Any = None,
) -> tuple[int, dict[str, Any]]:
    """Simulate ``labels`` of ``split`` block by block and queue their writes into ``folder``.

    Returns the image size and a dict that the writer thread fills with ``digest`` and
    ``param_names`` once the split is closed (valid after ``writer.finish()``). Nothing here
    waits for the device.
    """
    size = effective_block_size(block_size, len(labels))
    result: dict[str, Any] = {}
    split_writer: SplitWriter | None = None
    image_size = 0
    for block, start in enumerate(range(0, len(labels), size)):
        block_labels = labels[start : start + size]
        bseed = block_seed(seed, split, block)
        images, params = simulate_block_tensors(
            backend, preset, block_labels, seed=bseed, block_size=size,
            device=device, img_size=img_size, compiled=compiled, conditions=conditions,
        )
        if split_writer is None:
            image_size = int(images.shape[-1])
            split_writer = SplitWriter(folder, len(labels), image_size)
        pending = copies.start([images, *params.values()])
        extra = {
            "sim_seed": np.full(len(block_labels), bseed, dtype=np.int64),
            "sim_index": np.arange(len(block_labels), dtype=np.int64),
        }
        job = functools.partial(_write_block, split_writer, start, block_labels, list(params), pending, extra)
        writer.submit(job, cleanup=pending.release)
        if bar is not None:
            bar.update(len(block_labels))
    assert split_writer is not None

    def close(done: SplitWriter) -> None:
        result["digest"] = done.close()
        result["param_names"] = done.param_names

    writer.submit(functools.partial(close, split_writer))
    return image_size, result


def simulate_dataset(
    root: str | Path,
    preset: str,
    counts: Mapping[str, int],
    *,
    seed: int = 0,
    device: str = "cpu",
    img_size: int | None = None,
    block_size: int | None = None,
    force: bool = False,
    progress: bool = False,
    backend: ModuleType | Any | None = None,
    compile: bool | str | None = "auto",
    conditions: Any = None,
) -> DatasetMeta:
    """Simulate ``counts[split]`` images per class for every split and write the store at ``root``.

    Written into a temporary folder beside ``root`` block by block (memory-mapped, never the whole
    dataset in memory; a writer thread writes while the next block is simulated) and renamed into
    place at the end. ``block_size`` None takes the device's default (:func:`default_block_size`).
    Same arguments (``compile`` resolved alike, see :func:`resolve_compile`) on the same device
    give bitwise identical arrays; the compiled and eager simulators agree to float32 rounding.
    ``conditions`` (``ObservingConditions`` or a mapping): per-image observing conditions,
    recorded in meta.json; None or default ones give the dataset made without them, bit for bit.
    Returns the dataset's meta.
    """
    backend = backend or default_backend()
    conditions = normalise_conditions(conditions)
    backend.get_preset(preset)  # ValueError naming the allowed presets
    check_device(device)
    block_size = default_block_size(device) if block_size is None else block_size
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
    native: int | None = None
    if img_size is not None:
        native = native_image_size(backend, preset, device)
        if img_size > native:
            raise DatasetError(f"img_size {img_size} exceeds preset {preset}'s {native} px; allowed: 8..{native}")
    if native is None and compile in (None, "auto"):
        native = native_image_size(backend, preset, device)
    compiled = resolve_compile(compile, total, native or 0, device)
    capacity = max(effective_block_size(block_size, n_classes * counts[s]) for s in SPLITS)
    results: dict[str, dict[str, Any]] = {}
    with staged_dataset(root, force=force) as tmp, progress_bar(
        total=total, unit="img", desc=f"simulate {preset}", enabled=progress
    ) as bar, _BlockWriter() as writer:
        copies = _HostCopies(device, capacity)
        for split in SPLITS:
            labels = split_labels(seed, split, counts[split], n_classes)
            image_size, results[split] = _simulate_split(
                tmp / split, split, labels, writer=writer, copies=copies, backend=backend, preset=preset,
                seed=seed, block_size=block_size, device=device, img_size=img_size, compiled=compiled, bar=bar,
                conditions=conditions,
            )
            native = native or image_size
        writer.finish()  # the last writes and digests; re-raises a writer error
        digests = {split: results[split]["digest"] for split in SPLITS}
        meta = DatasetMeta(
            source="simulated",
            preset=preset,
            seed=seed,
            class_names=class_names,
            image_size=img_size or native,
            counts={s: {name: counts[s] for name in class_names} for s in SPLITS},
            param_names=results[SPLITS[-1]]["param_names"],
            digest=combine_digests(digests),
            split_digests=digests,
            version=package_version(),
            device=str(device),
            block_size=block_size,
            native_image_size=native,
            preprocessing=PREPARATION,
            compiled=compiled,
            conditions=recorded_conditions(conditions),
        )
        write_meta(tmp, meta)
    return meta


def simulate_throughput(
    preset: str,
    n_images: int,
    device: str = "cpu",
    img_size: int | None = None,
    *,
    seed: int = 0,
    block_size: int | None = None,
    compile: bool | str | None = "auto",
    backend: ModuleType | Any | None = None,
    workdir: str | Path | None = None,
) -> float:
    """Images per second of :func:`simulate_dataset`'s pipeline on ``device`` with its production
    settings (the device's block size and compile choice unless given, page-locked copies,
    writer thread, memory-mapped writes and the split digest).

    Times one split of ``n_images`` rounded up to whole classes, written to a temporary folder in
    ``workdir`` (default: the system's) and removed; one block is simulated before timing, so
    compilation is not counted.
    """
    backend = backend or default_backend()
    backend.get_preset(preset)
    check_device(device)
    block_size = default_block_size(device) if block_size is None else block_size
    n_classes = len(backend.CLASS_NAMES)
    labels = split_labels(seed, "train", max(1, math.ceil(n_images / n_classes)), n_classes)
    native = native_image_size(backend, preset, device)
    compiled = resolve_compile(compile, len(labels), native, device)
    size = effective_block_size(block_size, len(labels))
    settings = dict(seed=seed, block_size=size, device=device, img_size=img_size, compiled=compiled)
    # warm-up, not timed: compiles every class's graph and fills the device caches
    simulate_block(backend, preset, labels[:size], **settings)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp, _BlockWriter() as writer:
        start = time.perf_counter()
        _simulate_split(Path(tmp) / "train", "train", labels, writer=writer, copies=_HostCopies(device, size),
                        backend=backend, preset=preset, **settings)
        writer.finish()
        elapsed = time.perf_counter() - start
    return len(labels) / elapsed


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
    conditions: Any = None,
) -> Path:
    """Return ``root`` if it holds the dataset these arguments describe, else simulate it there.

    Splits use the default fractions of ``n_per_class``; the block size is the device's default.
    ``compile`` picks the simulator path for a new dataset (:func:`resolve_compile`); an existing
    dataset matches whichever path made it. ``conditions``: observing conditions (see
    :func:`simulate_dataset`); other conditions make another dataset. A different dataset
    already at ``root`` is never overwritten: DatasetError says what differs. Safe against a
    concurrent writer of the same dataset (the loser of the final rename re-checks and returns).
    """
    root = Path(root)
    counts = split_counts(n_per_class)
    wanted = recorded_conditions(conditions)
    if (root / "meta.json").exists():
        _check_matches(root, preset, counts, seed, img_size, wanted)
        return root
    try:
        simulate_dataset(
            root, preset, counts, seed=seed, device=device, img_size=img_size, progress=progress, backend=backend,
            compile=compile, conditions=conditions,
        )
    except (DatasetError, OSError):
        if not (root / "meta.json").exists():
            raise
        _check_matches(root, preset, counts, seed, img_size, wanted)
    return root


def _check_matches(root: Path, preset: str, counts: dict[str, int], seed: int, img_size: int | None,
                   conditions: dict | None = None) -> None:
    meta = read_meta(root)
    want_size = img_size if img_size is not None else meta.native_image_size
    found = {
        "source": meta.source,
        "preset": meta.preset,
        "seed": meta.seed,
        "image_size": meta.image_size,
        "per-class counts": {s: sorted(set(meta.counts[s].values())) for s in SPLITS},
        "conditions": meta.conditions,
    }
    wanted = {
        "source": "simulated",
        "preset": preset,
        "seed": seed,
        "image_size": want_size,
        "per-class counts": {s: [counts[s]] for s in SPLITS},
        "conditions": conditions,
    }
    diff = [f"{key}: found {found[key]}, wanted {wanted[key]}" for key in wanted if found[key] != wanted[key]]
    if diff:
        raise DatasetError(
            f"{root} holds a different dataset ({'; '.join(diff)}); choose another folder or remove it"
        )
