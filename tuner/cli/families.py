"""`lenstune families`: every family with its origin, parameters and forward GFLOPs.

FLOPs are counted by tuner.models.cost.forward_gflops for one image of the default size
(matrix multiplications and convolutions; 1 multiply-add = 2 FLOPs).
"""

from __future__ import annotations

import argparse

from tuner.models.cost import count_params, forward_gflops
from tuner.models.registry import build_model, check_img_size, family_info, list_families
from tuner.cli.command import CommandParser, UsageError, output, run_command
from tuner.progress import progress


def family_row(family: str, sizes: tuple[int, ...]) -> dict:
    """Origin, parameter count (millions) and GFLOPs per size of ``family``'s default model."""
    info = family_info(family)
    row = {"family": family, "origin": info.origin, "summary": info.summary}
    for size in sizes:
        model = build_model(family, img_size=size)
        row["params_m"] = count_params(model) / 1e6
        row[f"gflops_{size}"] = forward_gflops(model, size)
    return row


def build_parser() -> CommandParser:
    parser = CommandParser(
        "families", description=__doc__.splitlines()[0],
        examples=["lenstune families", "lenstune families --family swin --family levit --sizes 64"])
    parser.add_argument("--family", action="append", help="only these families (repeatable)")
    parser.add_argument("--sizes", default="64,150", help="image sizes in px, comma separated")
    return parser


def table(args: argparse.Namespace) -> None:
    families = args.family or list_families()
    unknown = [f for f in families if f not in list_families()]
    if unknown:
        raise UsageError(f"unknown family {', '.join(unknown)}, allowed: "
                         f"{', '.join(list_families())}")
    try:
        sizes = tuple(int(s) for s in args.sizes.split(","))
    except ValueError:
        raise UsageError(f"--sizes {args.sizes!r} is not allowed, give integers like 64,150") from None
    try:  # before the table starts: a bad size must not leave half a table
        for size in sizes:
            check_img_size(size)
    except ValueError as exc:
        raise UsageError(f"--sizes {args.sizes}: {exc}") from None
    header = f"{'family':<18} {'origin':<6} {'params (M)':>10} " + " ".join(
        f"{'GFLOPs@' + str(s):>11}" for s in sizes) + "  description"
    output(header)
    output("-" * len(header))
    for family in progress(families, desc="families", unit="family", leave=False):
        r = family_row(family, sizes)
        flops = " ".join(f"{r[f'gflops_{s}']:>11.3f}" for s in sizes)
        output(f"{family:<18} {r['origin']:<6} {r['params_m']:>10.2f} {flops}  {r['summary']}")


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), table, argv)
