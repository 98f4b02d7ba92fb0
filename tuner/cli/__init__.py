"""The `lenstune` console command.

Each subcommand lives in its own module, which owns its argument parser and exposes
``main(argv) -> int``. Modules are imported only when their subcommand runs, so
`lenstune --help` stays fast and nothing heavy happens on import.

Every command, ``tuner/run.py`` included, exits with one of
- ``EXIT_OK`` (0): done;
- ``EXIT_FAILED`` (1): the work started and failed or came to nothing (for example no trial of
  the study completed its budget, so nothing can be promoted);
- ``EXIT_USAGE`` (2): the input was refused before any work started: a flag, configuration,
  search space, dataset, image file, model URI or tracking store that cannot be used. The
  message names the bad value and what is allowed, and nothing was written.

Every command also takes ``--version``, ``-v/--verbose`` and ``-q/--quiet`` and reports errors in
one form, ``lenstune <command>: error: <what>, <what is allowed>`` (:mod:`tuner.cli.command`).
"""

from __future__ import annotations

import importlib
import sys

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def error(command: str, message: str, code: int = EXIT_USAGE) -> int:
    """Print ``lenstune <command>: error: <message>`` on stderr, as one line (a message of
    several lines is joined with "; "); returns ``code``."""
    message = "; ".join(line.strip() for line in str(message).splitlines() if line.strip())
    print(f"lenstune {command}: error: {message}", file=sys.stderr)
    return code

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("tuner.cli.simulate", "simulate a DeepLense-like dataset to disk"),
    "import-deeplense": ("tuner.cli.import_deeplense", "import a DeepLense-format folder into the store"),
    "show": ("tuner.cli.show", "montage of a dataset with substructure residuals"),
    "families": ("tuner.cli.families", "table of model families: parameters, GFLOPs, origin"),
    "tune": ("tuner.run", "run a tuning study (same as python tuner/run.py)"),
    "promote": ("tuner.cli.promote", "promote a study's best model in the MLflow registry"),
    "predict": ("tuner.cli.predict", "predict classes (and uncertainty) with a registered model"),
    "report": ("tuner.cli.report", "leaderboard and ROC report of an experiment from MLflow"),
    "uncertainty": ("tuner.cli.uncertainty", "uncertainty/calibration report for a registered model"),
    "robustness": ("tuner.cli.robustness", "how a registered model holds under changed noise, seeing, depth"),
    "dashboard": ("tuner.cli.dashboard", "optuna-dashboard on the searchers' studies (live and after)"),
    "demo": ("tuner.cli.demo", "a micro study end to end on this machine (what `make demo` runs)"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: lenstune <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "options:", "  -h, --help  this text", "  --version   print the version",
              "", "Every command takes --help, --version, -v/--verbose and -q/--quiet.",
              "Exit codes: 0 done, 1 the work failed, 2 bad input (nothing written).",
              "", "examples:",
              "  lenstune simulate --preset model_ii --n-per-class 1000 --out data/model_ii",
              "  lenstune report --experiment lenstune --out report/"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # a command is required: usage on stderr, as for any usage error
        print(_usage(), file=sys.stderr)
        return EXIT_USAGE
    if argv[0] in ("-h", "--help"):
        print(_usage())
        return EXIT_OK
    if argv[0] == "--version":
        from tuner import __version__

        print(f"lenstune {__version__}")
        return EXIT_OK
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"lenstune: error: unknown command {name!r}, allowed: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return EXIT_USAGE
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            return error(name, "not available in this version")
        raise
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
