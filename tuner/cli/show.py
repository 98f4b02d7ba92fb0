"""`lenstune show`: PNG montage of a dataset with substructure residuals."""

from __future__ import annotations

import argparse
import sys

from tuner.data.montage import render_montage
from tuner.data.store import SPLITS, DatasetError
from tuner.cli import EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lenstune show",
        description="Montage of K images per class and, for simulated data, substructure residuals.",
    )
    parser.add_argument("data", help="dataset folder (made by lenstune simulate or import-deeplense)")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--n-per-class", type=int, default=4, help="images per class (default 4)")
    parser.add_argument("--n-residuals", type=int, default=2, help="residual rows per substructure class (default 2)")
    parser.add_argument("--split", default="train", choices=SPLITS, help="split to show (default train)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not args.out.lower().endswith(".png"):
        print(f"lenstune show: --out {args.out!r} must end in .png", file=sys.stderr)
        return EXIT_USAGE
    try:
        residuals = render_montage(
            args.data, args.out, split=args.split, n_per_class=args.n_per_class, n_residuals=args.n_residuals
        )
    except (DatasetError, OSError) as exc:  # OSError: --out cannot be written (e.g. no such folder)
        print(f"lenstune show: {exc}", file=sys.stderr)
        return EXIT_USAGE
    stale = [r.index for r in residuals if not r.reproduced]
    if stale:
        print(f"lenstune show: images {stale} did not re-simulate identically; their residuals may "
              "belong to other draws (different device or simulator version)", file=sys.stderr)
    print(f"wrote {args.out}")
    return 0
