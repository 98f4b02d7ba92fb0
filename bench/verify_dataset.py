"""Cost of verifying a dataset before a study (``tuner.data.store.verify_dataset``).

A dataset of ``--n`` random 64 px images (default 30,000; splits 70/15/15 %, three classes) is
written through the store's own writer (``SplitWriter``, ``write_meta``), so its digests are the
real ones. Then, each ``--repeats`` times, median and best reported:

- reference ``read``: ``np.load`` of every split's three files (all bytes read into memory);
- reference ``read+sha256``: the same and ``hashlib.sha256`` over the images' bytes;
- ``verify (full)``: ``verify_dataset(root, use_marker=False)``: every digest recomputed from the
  memory-mapped files, pixels checked for NaN/inf;
- ``verify (marker)``: ``verify_dataset(root)`` with a valid ``.verified.json``: stats only.

Each is measured with the files in the page cache ("warm") and after evicting them
(``posix_fadvise(DONTNEED)`` on each file: "cold", read from disk). Peak extra anonymous memory
(RssAnon above the value before the call, sampled every 5 ms) shows what each keeps in memory
besides the mapped file pages.

    .venv/bin/python bench/verify_dataset.py --out bench/results/verify_dataset.md
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe as machine  # noqa: E402  (bench/ is not a package)

from tuner.data.store import (ARRAY_FILES, SPLITS, DatasetMeta, SplitWriter, combine_digests,
                              package_version, staged_dataset, verify_dataset, write_meta)

CLASSES = ("no_sub", "cdm", "axion")


def write_dataset(root: Path, n: int, size: int, seed: int = 0, chunk: int = 1024) -> Path:
    """``n`` random images in [0, 1) through the store's writer (real digests)."""
    per_class = {"train": int(n * 0.7) // 3, "val": int(n * 0.15) // 3}
    per_class["test"] = n // 3 - per_class["train"] - per_class["val"]
    rng = np.random.default_rng(seed)
    digests, counts = {}, {}
    with staged_dataset(root) as tmp:
        for split in SPLITS:
            total = 3 * per_class[split]
            labels = rng.permutation(np.repeat(np.arange(3), per_class[split])).astype(np.int64)
            writer = SplitWriter(tmp / split, total, size)
            for start in range(0, total, chunk):
                stop = min(start + chunk, total)
                images = rng.random((stop - start, 1, size, size), dtype=np.float32)
                writer.write(start, images, labels[start:stop],
                             {"index": np.arange(start, stop, dtype=np.int64)})
            digests[split] = writer.close()
            counts[split] = {name: per_class[split] for name in CLASSES}
        write_meta(tmp, DatasetMeta(source="simulated", preset="bench", seed=seed,
                                    class_names=CLASSES, image_size=size, counts=counts,
                                    param_names=("index",), digest=combine_digests(digests),
                                    split_digests=digests, version=package_version()))
    return root


def files(root: Path) -> list[Path]:
    return [root / "meta.json"] + [root / s / f for s in SPLITS for f in ARRAY_FILES]


def evict(root: Path) -> None:
    """Drop the dataset's pages from the page cache (clean pages: written and synced)."""
    for path in files(root):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def rss_anon_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


def measured(fn) -> tuple[float, float]:
    """(seconds, peak extra anonymous memory in MiB) of ``fn()``."""
    base, peak, done = rss_anon_kib(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_anon_kib() - base)
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    done.set()
    thread.join()
    peak[0] = max(peak[0], rss_anon_kib() - base)
    return seconds, peak[0] / 1024


def reference_read(root: Path, sha: bool) -> None:
    for split in SPLITS:
        images = np.load(root / split / "images.npy")
        np.load(root / split / "labels.npy")
        with np.load(root / split / "params.npz") as npz:
            {k: npz[k] for k in npz.files}
        if sha:
            hashlib.sha256(memoryview(images).cast("B")).hexdigest()
        del images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=30_000, help="images in the dataset")
    parser.add_argument("--size", type=int, default=64, help="image side (pixels)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to write the dataset (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=None, help="markdown report to write")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp) / "ds"
        t0 = time.perf_counter()
        write_dataset(root, args.n, args.size)
        write_s = time.perf_counter() - t0
        size_mb = sum(p.stat().st_size for p in files(root)) / 1e6
        print(f"wrote {args.n} images of {args.size} px ({size_mb:.0f} MB) in {write_s:.1f} s")
        verify_dataset(root)  # writes the marker
        cases = {
            "reference: np.load (read every byte)": lambda: reference_read(root, sha=False),
            "reference: np.load + hashlib.sha256 of the images": lambda: reference_read(root, sha=True),
            "verify_dataset, full (use_marker=False)": lambda: verify_dataset(root, use_marker=False),
            "verify_dataset, valid marker": lambda: verify_dataset(root),
        }
        rows = []
        for name, fn in cases.items():
            for cache in ("warm", "cold"):
                times, mems = [], []
                for _ in range(args.repeats):
                    if cache == "cold":
                        evict(root)
                    else:
                        fn()  # bring the files into the page cache
                    seconds, mem = measured(fn)
                    times.append(seconds)
                    mems.append(mem)
                row = (name, cache, statistics.median(times), min(times), max(mems))
                rows.append(row)
                print(f"{name:52s} {cache:4s} median {row[2] * 1e3:9.1f} ms  best {row[3] * 1e3:9.1f} ms  "
                      f"peak extra anon {row[4]:7.1f} MiB", flush=True)
    if args.out is None:
        return 0
    lines = [
        "# Dataset verification cost",
        "",
        f"Command: `.venv/bin/python bench/verify_dataset.py --n {args.n} --size {args.size} "
        f"--repeats {args.repeats} --out {args.out}`",
        "",
        f"Machine: {machine()}, numpy "
        f"{np.__version__}; {datetime.date.today().isoformat()}. Dataset: {args.n} random "
        f"{args.size}x{args.size} float32 images (train/val/test 70/15/15 %), {size_mb:.0f} MB "
        f"on disk, written through `SplitWriter` in {write_s:.1f} s.",
        "",
        "Times over all three splits; median and best of "
        f"{args.repeats}. \"warm\": files in the page cache; \"cold\": evicted with "
        "`posix_fadvise(DONTNEED)` before each run (read from this machine's disk). Peak extra "
        "anonymous memory: RssAnon above its value before the call (mapped file pages not "
        f"counted). Load average (1 min) {load_before:.2f} before the run and "
        f"{os.getloadavg()[0]:.2f} after: other jobs shared the 2 cores when it is above 1.",
        "",
        "| what | cache | median (ms) | best (ms) | peak extra anon memory (MiB) |",
        "|---|---|---:|---:|---:|",
    ]
    lines += [f"| {n} | {c} | {m * 1e3:.1f} | {b * 1e3:.1f} | {mem:.0f} |" for n, c, m, b, mem in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
