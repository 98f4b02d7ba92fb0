"""Cost of fresh training data (``tuner.data.fresh.simulate_training_epoch``) per epoch,
against reading the stored train split, measured in the same run.

A dataset is simulated once (``--preset``, ``--n-per-class``, ``--img-size``; splits 70/15/15 %).
Then, each ``--repeats`` times (median and best reported), on ``--threads`` torch threads:

- reference ``stored read``: ``load_split(root, "train")`` copied into contiguous memory (what
  the study driver does once before the trials, ``tuner.study.driver.load_arrays``), files in
  the page cache;
- reference ``stored epoch``: one shuffled pass over the in-memory split (``images[perm]``),
  what a trial does per epoch with stored data;
- ``fresh epoch``: ``simulate_training_epoch`` for the same counts (the preset's conditions),
  and with wide observing conditions (noise x0.5-4, PSF x0.75-1.5, mag +-1, shift 0.5 px);
- context: one training epoch of the ResNet-18 family on the same images (forward + backward,
  AdamW, batch ``--batch``), so the fresh-data cost can be read as a share of an epoch.

    PYTHONPATH=. .venv/bin/python bench/fresh_data.py --out bench/results/fresh_data.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe as machine  # noqa: E402  (bench/ is not a package)

from tuner.data import load_split, simulate_dataset, split_counts
from tuner.data.fresh import simulate_training_epoch
from tuner.lensing.conditions import ObservingConditions

WIDE = ObservingConditions(noise_scale=(0.5, 4.0), psf_fwhm_scale=(0.75, 1.5), source_mag_offset=(-1.0, 1.0),
                           subpixel_shift_px=0.5)


def timed(fn, repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` calls (the result of each dropped)."""
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def stored_read(root: Path) -> tuple[np.ndarray, np.ndarray]:
    split = load_split(root, "train")
    return np.ascontiguousarray(split.images.numpy()), np.ascontiguousarray(split.labels.numpy())


def training_epoch(img_size: int, batch: int):
    """A function running one training epoch of the ResNet-18 family over (images, labels);
    the model is built and one batch run before (not timed: once per trial)."""
    from tuner.models.registry import build_model

    model = build_model("resnet18", img_size=img_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def epoch(images: torch.Tensor, labels: torch.Tensor) -> None:
        for start in range(0, len(labels), batch):
            step(images[start : start + batch], labels[start : start + batch])

    step(torch.rand(batch, 1, img_size, img_size), torch.zeros(batch, dtype=torch.int64))
    return epoch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="model_ii")
    p.add_argument("--n-per-class", type=int, default=1000)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--no-train", action="store_true", help="skip the training-epoch context row")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    counts = split_counts(args.n_per_class)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        start = time.perf_counter()
        meta = simulate_dataset(root, args.preset, counts, seed=0, img_size=args.img_size, compile="no")
        made = time.perf_counter() - start
        n_train = meta.n_images("train")
        images, labels = stored_read(root)  # warm the page cache
        rows.append(("reference: stored read (load_split + copy into memory)", timed(lambda: stored_read(root),
                                                                                      args.repeats)))
        gen = torch.Generator().manual_seed(0)
        tensor = torch.from_numpy(images)
        rows.append(("reference: stored epoch (shuffled pass over the in-memory split)",
                     timed(lambda: tensor[torch.randperm(n_train, generator=gen)].sum(), args.repeats)))
        epoch = iter(range(10**6))
        rows.append(("fresh epoch, the preset's conditions", timed(
            lambda: simulate_training_epoch(root, seed=1, epoch=next(epoch), compile="no"), args.repeats)))
        rows.append(("fresh epoch, wide conditions", timed(
            lambda: simulate_training_epoch(root, seed=1, epoch=next(epoch), conditions=WIDE, compile="no"),
            args.repeats)))
        if not args.no_train:
            lab = torch.from_numpy(labels)
            train = training_epoch(args.img_size, args.batch)
            rows.append((f"context: one ResNet-18 training epoch (batch {args.batch}, AdamW)",
                         timed(lambda: train(tensor, lab), 1)))
    load_after = os.getloadavg()[0]
    ref_read = statistics.median(rows[0][1])
    ref_epoch = statistics.median(rows[1][1])
    lines = [
        "# Fresh training data: cost per epoch against stored data",
        "",
        f"Command: `PYTHONPATH=. python bench/fresh_data.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        f"Machine: {machine()}, no GPU used (device cpu), torch on {args.threads} thread(s); "
        f"{datetime.date.today()}. Load average (1 min) {load_before:.2f} before and {load_after:.2f} after "
        "(other jobs shared the cores when above 1).",
        "",
        f"Data: {args.preset} at {args.img_size} px (simulated at {meta.native_image_size} px, area-averaged), "
        f"train split {n_train} images ({counts['train']} per class), simulated in {made:.1f} s. Eager simulator "
        "(`compile='no'`: compilation pays only for far larger sets, see docs/data.md). Median and best of "
        f"{args.repeats} (the training epoch: once).",
        "",
        "| what | median (ms) | best (ms) | ms per image | x stored read | x stored epoch |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, times in rows:
        med = statistics.median(times)
        lines.append(f"| {name} | {1e3 * med:.2f} | {1e3 * min(times):.2f} | {1e3 * med / n_train:.4f} | "
                     f"{med / ref_read:.1f} | {med / ref_epoch:.1f} |")
    if not args.no_train:
        train_s = statistics.median(rows[-1][1])
        lines += ["", "Fresh data as a share of a training epoch (medians): "
                  + "; ".join(f"{name.removeprefix('fresh epoch, ')}: {statistics.median(t) / train_s:.1%}"
                              for name, t in rows if name.startswith("fresh"))
                  + ". On a GPU the simulator and the network both run on the device: not measured here."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
