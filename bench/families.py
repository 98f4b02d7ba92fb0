"""Training and inference throughput (images/s) of every family at 64 px on this CPU.

For each family, its micro model (the micro search space's sample at seed 0, built at 64 px)
and its default model: inference = eval-mode forward without autograd, training = forward +
cross-entropy backward + AdamW step, both on batches of ``--batch`` random images, median of
``--repeats`` timed runs after one warm-up. The reference is the ``scratch`` family measured in
the same run; ratios are images/s relative to it.

    .venv/bin/python bench/families.py --out bench/results/families.md
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tuner.models import build_model, list_families
from tuner.study.search_space import load_search_space

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe as machine  # noqa: E402  (bench/ is not a package)


def images_per_second(model: torch.nn.Module, batch: int, size: int, repeats: int, train: bool) -> float:
    x, y = torch.rand(batch, 1, size, size), torch.randint(0, 3, (batch,))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        if train:
            model.train()
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            model.eval()
            with torch.no_grad():
                model(x)

    step()  # warm-up: allocations, lazy initialisation
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--family", action="append")
    parser.add_argument("--out", help="write a markdown results file here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for family in args.family or list_families():
        micro = load_search_space(family, "micro", check_build=False).sample(0)["model"]
        for kind, hp in (("micro", micro), ("default", {})):
            model = build_model(family, img_size=args.size, **hp)
            params = sum(p.numel() for p in model.parameters())
            infer = images_per_second(model, args.batch, args.size, args.repeats, train=False)
            train = images_per_second(model, args.batch, args.size, args.repeats, train=True)
            rows.append((family, kind, params, train, infer))
            print(f"{family:<18} {kind:<8} {params/1e6:8.3f}M train {train:9.1f} img/s  infer {infer:9.1f} img/s",
                  flush=True)
    ref = {kind: (t, i) for f, kind, _, t, i in rows if f == "scratch"}
    lines = [
        "# Family throughput on CPU", "",
        f"Command: `.venv/bin/python bench/families.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"Machine: {machine()}, {torch.get_num_threads()} torch threads", f"Date: {datetime.date.today().isoformat()}",
        f"Setup: {args.size} px, batch {args.batch}, median of {args.repeats} after a warm-up; training = "
        "forward + backward + AdamW step. Ratios are against `scratch` of the same size class in this run.",
        "The machine was shared with other work while measuring: treat differences under ~30% as noise.", "",
        "| family | size | params | train img/s | x scratch | infer img/s | x scratch |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for family, kind, params, train, infer in rows:
        rt, ri = ref.get(kind, (float("nan"), float("nan")))
        lines.append(f"| {family} | {kind} | {params/1e6:.3f}M | {train:.1f} | {train/rt:.2f} | "
                     f"{infer:.1f} | {infer/ri:.2f} |")
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
