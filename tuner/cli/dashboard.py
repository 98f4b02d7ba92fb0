"""`lenstune dashboard`: optuna-dashboard on the searchers' Optuna studies.

Every family of every study keeps its searcher's Optuna study (``<study name>/<family>``) in the
Optuna storage (``--optuna-storage`` of the study; default ``sqlite:///<runs-dir>/optuna.db``),
so the dashboard shows a study while it runs and after: each trial's parameters, the score its
searcher was told, the optimisation history, parameter importances. Each Optuna trial carries
the Ray trial id (user attribute ``ray_trial_id``), the ``trial_id`` tag of its MLflow run.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tuner.cli.command import CommandParser, UsageError, run_command

log = logging.getLogger(__name__)


def build_parser() -> CommandParser:
    parser = CommandParser(
        "dashboard",
        description="Serve optuna-dashboard on the Optuna studies of lenstune's searchers "
                    "(one per study and family), on this host only unless --host says otherwise.",
        examples=["lenstune dashboard        # runs/optuna.db on http://127.0.0.1:8080",
                  "lenstune dashboard --storage postgresql://user:pw@db/optuna --port 8081"])
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"),
                        help="the studies' runs folder (default runs): its optuna.db")
    parser.add_argument("--storage", metavar="URL",
                        help="an Optuna storage URL instead (what the studies' --optuna-storage was)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument("--list", action="store_true",
                        help="print the studies and their trial counts, and exit")
    return parser


def storage_url(args: argparse.Namespace) -> str:
    """The storage the studies used: --storage, else the study config's own default (so the two
    never disagree): ``$LENSTUNE_OPTUNA_STORAGE``, else the runs folder's optuna.db."""
    from tuner.study.config import StudyConfig

    if args.storage:
        return args.storage
    url = StudyConfig(runs_dir=args.runs_dir).resolved_optuna_storage()
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        raise UsageError(f"no Optuna storage in --runs-dir {args.runs_dir} (no optuna.db): a study "
                         "run with that runs folder makes it; allowed: a runs folder of a study, "
                         "or --storage URL")
    return url


def dashboard(args: argparse.Namespace) -> None:
    import optuna

    from tuner.study.search import optuna_storage

    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port} is not allowed; allowed: 1-65535")
    url = storage_url(args)
    try:
        storage = optuna_storage(url)
        summaries = optuna.get_all_study_summaries(storage)
    except Exception as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise UsageError(f"the Optuna storage {url} cannot be read: {first[:300]}") from None
    log.info("Optuna storage: %s", url)
    for summary in sorted(summaries, key=lambda s: s.datetime_start or 0):
        best = summary.best_trial.value if summary.best_trial is not None else None
        log.info("  %-50s %3d trials  best %s", summary.study_name, summary.n_trials,
                 f"{best:.4f}" if best is not None else "-")
    if args.list:
        return
    from optuna_dashboard import run_server

    log.info("optuna-dashboard: http://%s:%d/ (Ctrl+C stops it)", args.host, args.port)
    try:
        run_server(storage, host=args.host, port=args.port)
    except KeyboardInterrupt:
        pass


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), dashboard, argv)
