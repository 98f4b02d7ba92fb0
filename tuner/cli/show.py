"""`lenstune show`: PNG montage of a dataset with substructure residuals."""

from __future__ import annotations

import argparse
import logging

from tuner.data.montage import render_montage
from tuner.data.store import SPLITS, DatasetError
from tuner.cli.command import CommandParser, UsageError, run_command

log = logging.getLogger(__name__)


def build_parser() -> CommandParser:
    parser = CommandParser(
        "show",
        description="Montage of K images per class and, for simulated data, substructure residuals.",
        examples=["lenstune show data/model_ii --out montage.png",
                  "lenstune show data/model_ii --split test --n-per-class 6 --out test.png"],
    )
    parser.add_argument("data", help="dataset folder (made by lenstune simulate or import-deeplense)")
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--n-per-class", type=int, default=4, help="images per class (default 4)")
    parser.add_argument("--n-residuals", type=int, default=2, help="residual rows per substructure class (default 2)")
    parser.add_argument("--split", default="train", choices=SPLITS, help="split to show (default train)")
    return parser


def show(args: argparse.Namespace) -> None:
    if not args.out.lower().endswith(".png"):
        raise UsageError(f"--out {args.out!r} is not allowed, it must end in .png")
    try:
        residuals = render_montage(
            args.data, args.out, split=args.split, n_per_class=args.n_per_class, n_residuals=args.n_residuals
        )
    except (DatasetError, OSError) as exc:  # OSError: --out cannot be written (e.g. no such folder)
        raise UsageError(str(exc)) from exc
    stale = [r.index for r in residuals if not r.reproduced]
    if stale:
        log.warning("images %s did not re-simulate identically; their residuals may belong to "
                    "other draws (different device or simulator version)", stale)
    log.info("wrote %s", args.out)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), show, argv)
