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
"""

from __future__ import annotations

import importlib
import sys

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def error(command: str, message: str, code: int = EXIT_USAGE) -> int:
    """Print ``lenstune <command>: error: <message>`` on stderr; returns ``code``."""
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
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: lenstune <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `lenstune <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from tuner import __version__

        print(f"lenstune {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"lenstune: unknown command {name!r}; allowed: {', '.join(COMMANDS)}", file=sys.stderr)
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
