"""What every lenstune command shares, so that all of them behave alike:

- :class:`CommandParser`: ``--version``, ``-v/--verbose`` and ``-q/--quiet`` on every command,
  examples at the end of ``--help``, and usage errors as one line in the one error form;
- :func:`setup_logging`: levelled ``logging`` (the ``tuner`` loggers) instead of prints: INFO
  and below on stdout, warnings and errors on stderr as ``lenstune <command>: warning: ...``;
  ``--quiet`` leaves warnings and errors, ``--verbose`` adds debug lines and MLflow's own;
- :func:`run_command`: parse, set up logging, run, and turn what went wrong into the exit code
  and the one error form (``lenstune <command>: error: <what>, <what is allowed>``), with no
  traceback unless ``--verbose``.

Exit codes (:mod:`tuner.cli`): 0 done, 1 the work failed, 2 the input was refused before any
work. A command signals them by returning a code or raising :class:`UsageError` /
:class:`WorkError`; any other exception is a failure while working (1).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from tuner.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE, error

LOGGER = "tuner"  # every module logs under tuner.<module>; run.py too (as tuner.run)
log = logging.getLogger(__name__)


class UsageError(ValueError):
    """The input was refused before any work started (exit 2); the message names the bad value
    and what is allowed."""


class WorkError(RuntimeError):
    """The work started and failed or came to nothing (exit 1)."""


def version_text() -> str:
    from tuner import __version__

    return f"lenstune {__version__}"


class CommandParser(argparse.ArgumentParser):
    """The parser of one command: ``prog`` is ``lenstune <command>``, ``examples`` (one or two
    command lines) end its ``--help``, and a usage error is one line on stderr with exit 2.
    ``mlflow_bars``: whether MLflow's own per-download bars may show (commands that download
    models; not those that fetch many small files and show their own bar)."""

    def __init__(self, command: str, *, description: str, examples: Sequence[str],
                 mlflow_bars: bool = True, **kwargs):
        epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
        super().__init__(prog=kwargs.pop("prog", f"lenstune {command}"), description=description,
                         epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
                         **kwargs)
        self.command, self.mlflow_bars = command, mlflow_bars
        common = self.add_argument_group("output")
        loudness = common.add_mutually_exclusive_group()
        loudness.add_argument("-v", "--verbose", action="store_true",
                              help="debug messages, MLflow's own, and tracebacks of failures")
        loudness.add_argument("-q", "--quiet", action="store_true",
                              help="only warnings and errors: no progress bars or messages")
        common.add_argument("--version", action="version", version=version_text())

    def error(self, message: str):  # argparse's usage errors: the one form, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}; `{self.prog} --help` lists "
                  "the options\n")


class _ConsoleHandler(logging.Handler):
    """Writes records through tqdm (so a progress bar is not torn) to the stream of the moment:
    INFO and below to stdout, warnings and errors to stderr."""

    def __init__(self, command: str, verbose: bool):
        super().__init__()
        self.command, self.verbose = command, verbose

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.levelno >= logging.WARNING:
                stream = sys.stderr
                message = f"lenstune {self.command}: {record.levelname.lower()}: {message}"
            else:
                stream = sys.stdout
                if self.verbose and record.levelno < logging.INFO:
                    message = f"[{record.name}] {message}"
            if record.exc_info and self.verbose:
                message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            from tqdm import tqdm

            tqdm.write(message, file=stream)
            stream.flush()
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


def output(line: str) -> None:
    """One line of what a command exists to print (a table): stdout, also with ``--quiet``,
    written past any progress bar."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stdout)
    sys.stdout.flush()


def setup_logging(command: str, *, verbose: bool = False, quiet: bool = False,
                  mlflow_bars: bool = True) -> None:
    """Route the ``tuner`` loggers to the console at the level the flags ask for (idempotent:
    a second call replaces the first's handler). MLflow's loggers show warnings only, unless
    ``verbose``; its per-download bars are shown when ``mlflow_bars``, stderr is a terminal and
    the command is not ``quiet`` (``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` set by the user
    wins)."""
    logger = logging.getLogger(LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, _ConsoleHandler)]:
        logger.removeHandler(handler)
    logger.addHandler(_ConsoleHandler(command, verbose))
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    # MLflow sets its loggers' level from MLFLOW_LOGGING_LEVEL when it is imported (later,
    # and in Ray's trial workers, which inherit the environment)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "DEBUG" if verbose else "WARNING")
    for name in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(os.environ["MLFLOW_LOGGING_LEVEL"])
    bars = mlflow_bars and not quiet and sys.stderr.isatty()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true" if bars else "false")


def run_command(parser: CommandParser, body: Callable[[argparse.Namespace], int | None],
                argv: Sequence[str] | None) -> int:
    """Parse ``argv``, set up logging, run ``body(args)`` and return the exit code:
    its own, 0 for None, 2 for a usage error (argparse's or :class:`UsageError`), 1 for
    :class:`WorkError`, an interruption or any other exception, each reported in the one
    error form (the traceback only with ``--verbose``)."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version (0) or a usage error (2, already printed)
        return EXIT_OK if exit_.code is None else int(exit_.code)
    setup_logging(parser.command, verbose=args.verbose, quiet=args.quiet,
                  mlflow_bars=parser.mlflow_bars)
    name = parser.prog.removeprefix("lenstune ")
    try:
        return int(body(args) or EXIT_OK)
    except UsageError as exc:
        return error(name, str(exc), EXIT_USAGE)
    except WorkError as exc:
        return error(name, str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        return error(name, "interrupted; what was finished is kept", EXIT_FAILED)
    except Exception as exc:  # noqa: BLE001 - a failure while working: one line, exit 1
        if args.verbose:
            traceback.print_exc(file=sys.stderr)
            hint = ""
        else:
            hint = " (--verbose shows the traceback)"
        first = next((line for line in str(exc).splitlines() if line.strip()), "")
        return error(name, f"{type(exc).__name__}: {first}{hint}", EXIT_FAILED)
