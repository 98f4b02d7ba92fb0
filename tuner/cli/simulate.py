"""`lenstune simulate`: simulate a DeepLense-like dataset into the store."""

from __future__ import annotations

import argparse
import logging

from tuner.data.simulate import (
    AUTO_COMPILE_MIN_PIXELS,
    CUDA_BLOCK_SIZE,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_FRACTIONS,
    simulate_dataset,
    split_counts,
)
from tuner.data.store import DatasetError, write_error_message
from tuner.cli.command import CommandParser, UsageError, run_command
from tuner.progress import progress_shown

log = logging.getLogger(__name__)


def build_parser() -> CommandParser:
    parser = CommandParser(
        "simulate",
        description="Simulate no_sub/cdm/axion lensing images into train/val/test splits.",
        examples=["lenstune simulate --preset model_ii --n-per-class 1000 --out data/model_ii",
                  "lenstune simulate --preset model_ii --n-per-class 1000 --img-size 32 --out data/model_ii_wide "
                  "--noise-scale 0.5,4 --psf-scale 0.75,1.5 --mag-offset=-1,1 --subpixel-shift 0.5"],
    )
    parser.add_argument("--preset", required=True, help="simulator preset: model_i, model_ii or model_iii")
    parser.add_argument("--n-per-class", type=int, required=True, help="images per class over all splits")
    parser.add_argument("--out", required=True, help="dataset folder to create")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu or cuda (default cpu)")
    parser.add_argument("--img-size", type=int, default=None, help="resize images to N px (area average)")
    parser.add_argument(
        "--batch-size", type=int, default=None,
        help=f"images per simulator call and per seeded block (default {DEFAULT_BLOCK_SIZE} on "
        f"the CPU, {CUDA_BLOCK_SIZE} on CUDA); part of the dataset's identity",
    )
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument(
        "--split-fractions", type=float, nargs=3, metavar=("TRAIN", "VAL", "TEST"), default=None,
        help=f"fractions of --n-per-class per split (default {' '.join(map(str, DEFAULT_FRACTIONS))})",
    )
    sizes.add_argument(
        "--split-counts", type=int, nargs=3, metavar=("TRAIN", "VAL", "TEST"), default=None,
        help="explicit images per class per split (overrides --n-per-class)",
    )
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=None,
        help="run the simulator under torch.compile (same draws; seconds of compilation per class). "
        f"Default: compile when the dataset has >= {AUTO_COMPILE_MIN_PIXELS:.0e} pixels (images x H x W)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing dataset at --out")
    observing = parser.add_argument_group(
        "observing conditions", "per-image draws (docs/physics.md); default: the preset's own. A range is LO,HI "
        "or one number (fixed); write a negative one as --mag-offset=-1,1. Flags override --conditions.")
    observing.add_argument("--conditions", metavar="FILE.yaml", default=None,
                           help="dataset recipe: YAML with noise_scale, psf_fwhm_scale, source_mag_offset, "
                           "subpixel_shift_px")
    observing.add_argument("--noise-scale", metavar="LO,HI", default=None,
                           help="noise rms x s, log-uniform (depth: exposure / s^2)")
    observing.add_argument("--psf-scale", metavar="LO,HI", default=None,
                           help="PSF FWHM x f, log-uniform (seeing)")
    observing.add_argument("--mag-offset", metavar="LO,HI", default=None,
                           help="magnitudes added to the source, uniform (negative is brighter)")
    observing.add_argument("--subpixel-shift", metavar="PX", type=float, default=None,
                           help="scene shifted by U(-PX, PX) pixels per axis (centring)")
    return parser


def conditions_from_args(args: argparse.Namespace):
    """The ObservingConditions the flags ask for (a --conditions file, then the flags over it);
    UsageError naming the flag or file and what is allowed."""
    from tuner.lensing.conditions import ObservingConditions, parse_range

    base = ObservingConditions.from_yaml(args.conditions) if args.conditions else ObservingConditions()
    fields = {}
    for flag, dest, field in (("--noise-scale", "noise_scale", "noise_scale"),
                              ("--psf-scale", "psf_scale", "psf_fwhm_scale"),
                              ("--mag-offset", "mag_offset", "source_mag_offset")):
        value = getattr(args, dest)
        if value is not None:
            fields[field] = parse_range(value, flag)
            ObservingConditions.from_mapping({field: fields[field]}, where=flag)  # names the flag
    if args.subpixel_shift is not None:
        fields["subpixel_shift_px"] = args.subpixel_shift
        ObservingConditions.from_mapping({"subpixel_shift_px": args.subpixel_shift}, where="--subpixel-shift")
    if not fields:
        return base
    return ObservingConditions.from_mapping({**base.to_dict(), **fields}, where="observing-condition flags")


def simulate(args: argparse.Namespace) -> None:
    try:
        conditions = conditions_from_args(args)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    try:
        counts = split_counts(args.n_per_class, args.split_fractions, args.split_counts)
        meta = simulate_dataset(
            args.out, args.preset, counts, seed=args.seed, device=args.device, img_size=args.img_size,
            block_size=args.batch_size, force=args.force, progress=progress_shown(),
            compile=args.compile, conditions=conditions,
        )
    except (DatasetError, ValueError, OSError) as exc:
        raise UsageError(write_error_message(args.out, exc)) from exc
    sizes = ", ".join(f"{s} {meta.n_images(s)}" for s in meta.counts)
    varied = f", conditions {meta.conditions}" if meta.conditions else ""
    log.info("wrote %s: %s, %s px, %s%s; digest %s", args.out, meta.preset, meta.image_size, sizes, varied,
             meta.digest[:16])


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), simulate, argv)
