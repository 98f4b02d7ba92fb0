"""The tuning entry point: ``python tuner/run.py --family swin`` or ``lenstune tune``.

Flags -> :class:`tuner.study.config.StudyConfig` -> :func:`tuner.study.driver.run_study`. Every input is
checked (families, search spaces, dataset, tracking server) before anything is written to
MLflow or Ray is started. Under ``ray job submit`` (RAY_ADDRESS set) it joins that cluster,
otherwise it starts a local Ray.

When the study has finished, the best completed trial is promoted (:mod:`tuner.registry.promotion`:
evaluated on the test split, registered, ``champion`` moved only if it is better) unless
``--no-promote``; ``--ensemble-top-k K`` also registers a hyper-ensemble of the top-k completed
trials (:mod:`tuner.registry.ensembles`). A study whose promotion finds nothing to promote has
still finished: the reason is printed and the exit code stays 0.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a file: make the repository root importable and keep this folder off sys.path,
    # where config.py, search.py, ... would shadow other packages' modules.
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

log = logging.getLogger("tuner.run")  # also when run as a file (__name__ == "__main__")


def _auto_or(kind):
    """argparse type: the word ``auto`` or a number of ``kind``."""
    def parse(text: str):
        if text == "auto":
            return text
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed; give a number or 'auto'")
    parse.__name__ = kind.__name__
    return parse


def _comma_list(text: str) -> list[str]:
    """argparse type: ``a,b,c`` -> ``["a", "b", "c"]``."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{text!r} names nothing; give a comma-separated list")
    return items


def build_parser() -> argparse.ArgumentParser:
    from tuner.cli.command import CommandParser
    from tuner.study.strategies import STRATEGIES

    p = CommandParser(
        "tune",
        mlflow_bars=False,  # many small downloads: the study's own lines say more
        description="Tune transformer families on lensing images with Ray Tune (Optuna TPE + "
        "ASHA) and track every trial in MLflow. Defaults: tuner/study/defaults.yaml. "
        "Also run as `python tuner/run.py`.",
        examples=["python tuner/run.py --family levit,cvt --profile micro --preset model_ii "
                  "--img-size 32 --samples 4",
                  "ray job submit --address http://127.0.0.1:8265 --working-dir . -- "
                  "python tuner/run.py --family swin"],
    )
    p.add_argument("--family", help="family name, comma list, or 'all' (default: vit)")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--data", type=Path, help="dataset store root (tuner.data format)")
    data.add_argument("--preset", help="simulate this preset when no dataset is given (model_ii)")
    p.add_argument("--n-per-class", type=int, help="train images per class when simulating")
    p.add_argument("--img-size", type=int, help="simulated image side in pixels")
    p.add_argument("--input-size", type=int, help="network input side in pixels (default: the "
                   "search space's img_size, else the dataset's image size)")
    p.add_argument("--profile", choices=["gpu", "micro"], help="search-space profile")
    p.add_argument("--samples", type=int, help="trials per family")
    p.add_argument("--max-epochs", type=int, help="override the search space's epoch budget")
    p.add_argument("--cpus-per-trial", type=float)
    p.add_argument("--gpus-per-trial", type=_auto_or(float), metavar="N|auto",
                   help="GPUs per trial, fractions below 1 share a GPU; default auto: a share "
                   "sized from the profile when the Ray cluster has or can start GPU nodes, else 0")
    p.add_argument("--max-concurrent", type=_auto_or(int), metavar="N|auto",
                   help="trials running at once per family; default auto: the trial slots the "
                   "cluster has or can scale to")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile each trial's model (worth it on GPUs for long trials)")
    p.add_argument("--asha-rule", choices=["rank", "percentile"],
                   help="ASHA rung rule (docs/tuning.md); default rank")
    p.add_argument("--tpe-told", choices=["first-rung", "last"],
                   help="score TPE learns of a trial (docs/tuning.md); default first-rung")
    p.add_argument("--objective", choices=["val_auc", "robust_auc"],
                   help="what ASHA and the searcher maximise: validation macro AUC (default), or "
                   "macro AUC over the validation shift suite (docs/robustness.md)")
    p.add_argument("--robust-reduce", choices=["mean", "worst"],
                   help="robust_auc over the shifts: their mean (default) or the worst")
    p.add_argument("--train-data", choices=["stored", "fresh"],
                   help="fresh: every trial simulates a new training set each epoch on its "
                   "device (simulated datasets only); default stored")
    p.add_argument("--conditions", type=Path, metavar="FILE.yaml",
                   help="observing conditions drawn per image when the study simulates its "
                   "dataset (noise, PSF, source magnitude, centring; docs/data.md)")
    p.add_argument("--shift-floor", type=float, metavar="AUC",
                   help="promotion refuses a best trial whose worst macro AUC on the test shift "
                   "suite is below AUC (docs/robustness.md)")
    p.add_argument("--strategy", choices=list(STRATEGIES),
                   help="searcher and early stopping (docs/tuning.md): asha-tpe (default), "
                   "asha-gp, random, grid, pbt, pb2, hyperband-bohb; nsga2 and mo-tpe with "
                   "--objectives")
    p.add_argument("--objectives", type=_comma_list, metavar="METRIC:DIR,...",
                   help="multi-objective: the objective first, then costs, e.g. "
                   "val_auc_macro:max,latency_ms:min (latency_ms, latency_ms_b256, params, gflops)")
    p.add_argument("--max-latency-ms", type=float, metavar="MS",
                   help="promotion takes only trials at most this fast (batch 1, on their device)")
    p.add_argument("--max-params", type=int, metavar="N",
                   help="promotion takes only trials with at most N parameters")
    p.add_argument("--grid-points", type=int, metavar="N",
                   help="--strategy grid: values per numeric range (default 3)")
    p.add_argument("--optuna-storage", metavar="URL",
                   help="Optuna storage of the searchers' studies (sqlite:///..., postgresql://...); "
                   "default $LENSTUNE_OPTUNA_STORAGE, else sqlite:///<runs-dir>/optuna.db; "
                   "`lenstune dashboard` shows it")
    p.add_argument("--extend", type=int, metavar="N",
                   help="add N trials per family to the study named by --study-name (finished or "
                   "not), with the search space and strategy it ran with")
    p.add_argument("--warm-start", metavar="STUDY|EXPERIMENT",
                   help="begin each family with the best configurations of an earlier study (or "
                   "of every study of an MLflow experiment) whose search space fits this one's")
    p.add_argument("--warm-start-top", type=int, metavar="K",
                   help="--warm-start: how many earlier configurations to begin with (default 3)")
    p.add_argument("--plateau", type=int, metavar="N",
                   help="stop a family when its best has not improved in N trials")
    p.add_argument("--budget-gpu-hours", type=float, metavar="HOURS",
                   help="stop a family when its trials have used this much device time "
                   "(CPU-hours on a CPU-only study)")
    p.add_argument("--time-budget", dest="time_budget_s", type=float, help="seconds per family")
    p.add_argument("--experiment", help="MLflow experiment name")
    p.add_argument("--study-name", help="name of the study (Ray Tune run); default derived")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue an interrupted study (the latest one, or --study-name)")
    p.add_argument("--tracking-uri", help="MLflow server (http://...) or sqlite:///...; "
                   "default: $MLFLOW_TRACKING_URI, else embedded sqlite under --runs-dir")
    p.add_argument("--runs-dir", type=Path, help="local folder for embedded MLflow and studies")
    p.add_argument("--storage", help="Ray Tune storage: a path or s3://bucket/prefix; default: "
                   "$LENSTUNE_STORAGE, else <runs-dir>/studies (refused on a multi-node cluster)")
    p.add_argument("--seed", type=int)
    p.add_argument("--max-failures", type=int, help="retries of an errored trial")
    p.add_argument("--tracking-outage-limit", dest="tracking_outage_limit_s", type=float,
                   metavar="SECONDS", help="how long the tracking server may stay unreachable "
                   "before the study stops cleanly (default 180; writes wait on local disk)")
    p.add_argument("--num-cpus", type=int, help="CPUs of a local Ray (default: all)")
    p.add_argument("--config", type=Path, help="YAML file of study settings (below flags)")
    p.add_argument("--no-promote", dest="promote", action="store_false", default=None,
                   help="do not register the best trial nor move the champion alias")
    p.add_argument("--ensemble-top-k", type=int, metavar="K",
                   help="also register a hyper-ensemble greedily picked (validation NLL) from "
                   "the top-K completed trials; it competes for champion unless --no-promote")
    return p


def overrides_from_args(args: argparse.Namespace) -> dict:
    """Flag values that were given, as StudyConfig fields (families still unparsed)."""
    values = {k: v for k, v in vars(args).items()
              if k not in ("family", "config", "verbose", "quiet")}
    if values.get("conditions") is not None:  # a recipe file: its mapping is the setting
        from tuner.study.config import load_yaml

        values["conditions"] = load_yaml(values["conditions"])
    return {k: v for k, v in values.items() if v is not None}


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run the study, print its leaderboard, promote. Exit codes (tuner.cli):
    0 done; 1 no trial finished without failing; 2 bad input, refused before any work."""
    from tuner.cli.command import run_command

    return run_command(build_parser(), tune, argv)


def tune(args: argparse.Namespace) -> int:
    """The study of ``args`` (see :func:`main`)."""
    from tuner.cli.command import UsageError, WorkError
    from tuner.tracking import schema
    from tuner.study.config import ConfigError, parse_family_list, resolve_study_config
    from tuner.data import DatasetError
    from tuner.study.faults import DiskError, disk_cause, stop_message
    from tuner.tracking.outbox import TrackingOutageError, is_outage
    from tuner.tracking.writer import TrackingError

    try:
        from tuner.models import list_families
        from tuner.study.search_space import SearchSpaceError

        overrides = overrides_from_args(args)
        if args.family is not None:
            overrides["families"] = parse_family_list(args.family, list(list_families()))
        config = resolve_study_config(overrides, args.config)
        unknown = [f for f in config.families if f not in list_families()]
        if unknown:
            raise ConfigError(f"unknown family {unknown[0]!r}; allowed: all, {', '.join(list_families())}")
        from tuner.study.driver import run_study

        result = run_study(config)
    except (ConfigError, DatasetError, TrackingError, SearchSpaceError) as exc:
        raise UsageError(str(exc)) from exc
    except (TrackingOutageError, DiskError) as exc:  # the study stopped cleanly
        raise WorkError(str(exc)) from exc
    except Exception as exc:
        if disk_cause(exc):  # the driver's own writes (leaderboard, Ray's state) hit the disk
            from tuner.study.driver import study_folders

            raise WorkError(stop_message(disk_cause(exc), study_folders(config))) from exc
        if not is_outage(exc):
            raise
        raise WorkError(f"the MLflow tracking server stopped answering: {exc}; its unsent writes "
                        "wait under the runs folder's outbox/; run the same command with "
                        "--resume once the server is back") from exc
    log.info(result.summary())
    failed = [r for r in result.rows if r.get(schema.STOP_REASON_TAG) == schema.STOP_FAILED]
    if result.rows and len(failed) == len(result.rows):
        raise WorkError(f"all {len(failed)} trials failed (failures.csv on the study run says why)")
    register_after_study(config, result)
    if failed:
        raise WorkError(f"{len(failed)} of {len(result.rows)} trials failed (failures.csv on the "
                        "study run says why); the others were tuned and promoted as usual")
    return 0


def register_after_study(config, result, echo=log.info) -> None:
    """Promotion of the best trial and, with ``ensemble_top_k``, of the hyper-ensemble.
    Nothing to promote (e.g. no trial completed its budget) is reported, not raised."""
    from tuner.data import DatasetError
    from tuner.registry.promotion import PromotionError
    from tuner.cli.promote import format_result

    if not config.promote and not config.ensemble_top_k:
        echo("promotion skipped (--no-promote)")
        return
    common = dict(tracking_uri=result.tracking_uri, data_root=result.data_root,
                  study_run_id=result.parent_run_id, echo=echo)
    if config.promote:
        from tuner.registry.promotion import promote_champion, promotion_limits

        echo("promotion of the best completed trial:")
        try:
            promoted = promote_champion(config.experiment, **common,
                                        shift_floor=config.shift_floor,
                                        limits=promotion_limits(config.max_latency_ms,
                                                                config.max_params))
        except (PromotionError, DatasetError) as exc:
            echo(f"promotion: nothing promoted: {exc}")
        else:
            from tuner.tracking.description import describe_study_after_promotion

            echo(format_result(promoted))
            describe_study_after_promotion(result.tracking_uri, promoted)
    if config.ensemble_top_k:
        from tuner.registry.ensembles import register_hyper_ensemble
        from tuner.registry.promotion import promotion_limits

        echo(f"hyper-ensemble of the top {config.ensemble_top_k} completed trials:")
        try:
            echo(format_result(register_hyper_ensemble(
                config.experiment, top_k=config.ensemble_top_k, compete=config.promote,
                limits=promotion_limits(config.max_latency_ms, config.max_params), **common)))
        except (PromotionError, DatasetError) as exc:
            echo(f"hyper-ensemble: nothing registered: {exc}")


if __name__ == "__main__":
    sys.exit(main())
