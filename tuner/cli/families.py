"""`lenstune families`: every family with its origin, parameters and forward GFLOPs.

FLOPs are counted by torch.utils.flop_counter.FlopCounterMode for one image of the default
size (matrix multiplications and convolutions; 1 multiply-add = 2 FLOPs).
"""

from __future__ import annotations

import argparse
import sys

import torch

from tuner.models.registry import build_model, check_img_size, family_info, list_families
from tuner.cli import EXIT_USAGE


def forward_gflops(model: torch.nn.Module, img_size: int, in_chans: int = 1) -> float:
    """Forward GFLOPs of ``model`` on one (1, in_chans, img_size, img_size) image."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    # Not under no_grad: FlopCounterMode's module tracker needs autograd on tuple inputs (PiT).
    with counter:
        model.eval()(torch.zeros(1, in_chans, img_size, img_size))
    return counter.get_total_flops() / 1e9


def family_row(family: str, sizes: tuple[int, ...]) -> dict:
    """Origin, parameter count (millions) and GFLOPs per size of ``family``'s default model."""
    info = family_info(family)
    row = {"family": family, "origin": info.origin, "summary": info.summary}
    for size in sizes:
        model = build_model(family, img_size=size)
        row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
        row[f"gflops_{size}"] = forward_gflops(model, size)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lenstune families", description=__doc__.splitlines()[0])
    parser.add_argument("--family", action="append", help="only these families (repeatable)")
    parser.add_argument("--sizes", default="64,150", help="image sizes in px, comma separated")
    args = parser.parse_args(argv)
    families = args.family or list_families()
    unknown = [f for f in families if f not in list_families()]
    if unknown:
        print(f"lenstune families: unknown family {', '.join(unknown)}; allowed: "
              f"{', '.join(list_families())}", file=sys.stderr)
        return EXIT_USAGE
    try:
        sizes = tuple(int(s) for s in args.sizes.split(","))
    except ValueError:
        print(f"lenstune families: --sizes must be integers like 64,150, got {args.sizes!r}", file=sys.stderr)
        return EXIT_USAGE
    try:  # before the table starts: a bad size must not leave half a table
        for size in sizes:
            check_img_size(size)
    except ValueError as exc:
        print(f"lenstune families: --sizes {args.sizes}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    header = f"{'family':<18} {'origin':<6} {'params (M)':>10} " + " ".join(
        f"{'GFLOPs@' + str(s):>11}" for s in sizes) + "  description"
    print(header)
    print("-" * len(header))
    for family in families:
        r = family_row(family, sizes)
        flops = " ".join(f"{r[f'gflops_{s}']:>11.3f}" for s in sizes)
        print(f"{family:<18} {r['origin']:<6} {r['params_m']:>10.2f} {flops}  {r['summary']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
