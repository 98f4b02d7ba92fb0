"""`lenstune import-deeplense`: convert a DeepLense-format folder into the store."""

from __future__ import annotations

import argparse
import sys

from tuner.data.deeplense import import_deeplense
from tuner.data.store import DatasetError, write_error_message
from tuner.cli import EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lenstune import-deeplense",
        description="Import SRC/<split>/<class>/*.npy (classes no/sphere/vort or no_sub/cdm/axion).",
    )
    parser.add_argument("src", help="DeepLense dataset folder holding train/ (and val/, test/)")
    parser.add_argument("--out", required=True, help="dataset folder to create")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of train carved into val if SRC has no val/ (default 0.1)")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="share of train carved into test if SRC has no test/ (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the carving (default 0)")
    parser.add_argument("--force", action="store_true", help="replace an existing dataset at --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        meta = import_deeplense(
            args.src, args.out, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
            seed=args.seed, force=args.force, progress=not args.quiet,
        )
    except (DatasetError, OSError) as exc:
        print(f"lenstune import-deeplense: {write_error_message(args.out, exc)}", file=sys.stderr)
        return EXIT_USAGE
    sizes = ", ".join(f"{s} {meta.n_images(s)}" for s in meta.counts)
    print(f"wrote {args.out}: {meta.image_size} px, {sizes}; digest {meta.digest[:16]}")
    return 0
