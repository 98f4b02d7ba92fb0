"""`lenstune import-deeplense`: convert a DeepLense-format folder into the store."""

from __future__ import annotations

import argparse
import logging

from tuner.data.deeplense import import_deeplense
from tuner.data.store import DatasetError, write_error_message
from tuner.cli.command import CommandParser, UsageError, run_command
from tuner.progress import progress_shown

log = logging.getLogger(__name__)


def build_parser() -> CommandParser:
    parser = CommandParser(
        "import-deeplense",
        description="Import SRC/<split>/<class>/*.npy (classes no/sphere/vort or no_sub/cdm/axion).",
        examples=["lenstune import-deeplense ~/deeplense/Model_II --out data/deeplense_ii",
                  "lenstune import-deeplense ~/deeplense/Model_I --out data/deeplense_i "
                  "--val-fraction 0.2 --force"],
    )
    parser.add_argument("src", help="DeepLense dataset folder holding train/ (and val/, test/)")
    parser.add_argument("--out", required=True, help="dataset folder to create")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of train carved into val if SRC has no val/ (default 0.1)")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="share of train carved into test if SRC has no test/ (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the carving (default 0)")
    parser.add_argument("--force", action="store_true", help="replace an existing dataset at --out")
    return parser


def import_folder(args: argparse.Namespace) -> None:
    try:
        meta = import_deeplense(
            args.src, args.out, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
            seed=args.seed, force=args.force, progress=progress_shown(),
        )
    except (DatasetError, OSError) as exc:
        raise UsageError(write_error_message(args.out, exc)) from exc
    sizes = ", ".join(f"{s} {meta.n_images(s)}" for s in meta.counts)
    log.info("wrote %s: %s px, %s; digest %s", args.out, meta.image_size, sizes, meta.digest[:16])


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), import_folder, argv)
