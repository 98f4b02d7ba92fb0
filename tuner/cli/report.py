"""`lenstune report`: a results page of an experiment, read from MLflow alone.

Writes a new folder ``--out`` (an earlier report there is replaced only with ``--force``):
``leaderboard.csv`` (one row per family), ``roc_families.png`` (test ROC of each family's best
trial, macro-averaged over the one-vs-rest curves) and ``README.md``, a Markdown page with the
leaderboard table that links both.

Per family: trials run and completed, the best validation macro AUC among completed trials, that
trial's test metrics (logged by ``lenstune promote``, which evaluates every family's best), its
hyperparameters, epochs spent by all the family's trials, and compute: each trial's wall time
times the CPUs / GPUs per trial its study recorded (``cpus_per_trial``, ``gpus_per_trial``
params; 1 CPU and 0 GPUs when absent).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from tuner.data.staging import staged_folder
from tuner.tracking import schema
from tuner.tracking.reader import PromotionError, TrialSummary, best_completed, list_trials
from tuner.cli import EXIT_USAGE, error

FIELDS = ("family", "trials", "completed", "best_val_auc", "test_auc", "test_acc", "test_ece",
          "test_nll", "epochs", "cpu_hours", "gpu_hours", "run_id", "params")


def _number(text: str | None, default: float) -> float:
    try:
        return float(text) if text is not None else default
    except ValueError:  # "auto" in a study's configured params
        return default


def _study_resources(client, experiment_id: str) -> dict[tuple[str, str], tuple[float, float]]:
    """(study run id, family) -> (CPUs, GPUs) per trial, from the study's params: the resolved
    ``resources.<family>.*`` values, else (older studies) the configured ones, which family ""
    holds for every study."""
    out = {}
    for study in client.search_runs([experiment_id], f"tags.`{schema.KIND_TAG}` = '{schema.KIND_STUDY}'",
                                    max_results=5000):
        params = study.data.params
        cpus = _number(params.get("cpus_per_trial"), 1.0)
        gpus = _number(params.get("gpus_per_trial"), 0.0)
        out[study.info.run_id, ""] = (cpus, gpus)
        for family in filter(None, params.get("families", "").split(",")):
            out[study.info.run_id, family] = (
                _number(params.get(f"resources.{family}.cpus_per_trial"), cpus),
                _number(params.get(f"resources.{family}.gpus_per_trial"), gpus))
    return out


def family_rows(client, experiment_id: str) -> tuple[list[dict], dict[str, TrialSummary]]:
    """Leaderboard rows (best test AUC first, then best val AUC) and each family's best trial."""
    trials = list_trials(client, experiment_id)
    best = best_completed(trials)
    resources = _study_resources(client, experiment_id)
    rows = []
    for family in sorted({t.family for t in trials}):
        mine = [t for t in trials if t.family == family]
        cpu_h = gpu_h = 0.0
        for t in mine:
            if t.end_time_ms is None:
                continue
            hours = (t.end_time_ms - t.start_time_ms) / 3.6e6
            cpus, gpus = resources.get((t.parent_run_id, family),
                                       resources.get((t.parent_run_id, ""), (1.0, 0.0)))
            cpu_h, gpu_h = cpu_h + hours * cpus, gpu_h + hours * gpus
        row = {"family": family, "trials": len(mine),
               "completed": sum(t.stop_reason == schema.STOP_COMPLETED for t in mine),
               "epochs": sum(t.epochs for t in mine),
               "cpu_hours": cpu_h, "gpu_hours": gpu_h}
        if family in best:
            run = client.get_run(best[family].run_id)
            m = run.data.metrics
            row.update(best_val_auc=best[family].val_auc, run_id=run.info.run_id,
                       params=" ".join(f"{k}={v}" for k, v in sorted(run.data.params.items())
                                       if k.startswith(("model.", "train."))))
            for key in ("auc", "acc", "ece", "nll"):
                name = "test_auc_macro" if key == "auc" else f"test_{key}"
                row[f"test_{key}"] = m.get(name)
        rows.append({field: row.get(field) for field in FIELDS})
    rows.sort(key=lambda r: (-(r["test_auc"] or -1.0), -(r["best_val_auc"] or -1.0)))
    return rows, best


def macro_roc(roc: dict[str, dict[str, list[float]]], grid: np.ndarray) -> np.ndarray:
    """Mean over classes of the one-vs-rest TPR interpolated on the FPR ``grid``."""
    return np.mean([np.interp(grid, c["fpr"], c["tpr"]) for c in roc.values()], axis=0)


def plot_family_rocs(client, rows: list[dict], path: Path) -> list[str]:
    """One macro ROC curve per family's best trial (from its ``evaluation/roc.json``);
    returns the families that had one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0.0, 1.0, 201)
    fig, ax = plt.subplots(figsize=(6, 5))
    plotted = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            if row["run_id"] is None or row["test_auc"] is None:
                continue
            try:
                local = client.download_artifacts(row["run_id"], f"{schema.EVALUATION_ARTIFACT}/roc.json", tmp)
            except Exception:  # noqa: BLE001 - a trial without a stored ROC is simply not drawn
                continue
            roc = json.loads(Path(local).read_text())
            ax.plot(grid, macro_roc(roc, grid), label=f"{row['family']} (test AUC {row['test_auc']:.4f})")
            plotted.append(row["family"])
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate (macro over classes)",
           title="test ROC of each family's best trial")
    if plotted:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return plotted


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if value >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def markdown_page(experiment: str, rows: list[dict], plotted: list[str]) -> str:
    """The report page: leaderboard table, ROC figure, how the numbers were obtained."""
    columns = ("family", "trials", "completed", "best_val_auc", "test_auc", "test_acc",
               "test_ece", "test_nll", "epochs", "cpu_hours", "gpu_hours")
    lines = [f"# lenstune results: experiment `{experiment}`", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in columns) + " |" for r in rows]
    lines += ["", "Best hyperparameters per family (best completed trial by validation macro AUC):", ""]
    lines += [f"- **{r['family']}** (run `{r['run_id']}`): {r['params'] or '-'}"
              for r in rows if r["run_id"]]
    lines += ["", "![test ROC of each family's best trial](roc_families.png)", "",
              f"ROC curves drawn for: {', '.join(plotted) or 'none'}. Test metrics come from "
              "`lenstune promote`, which evaluates the best trial of every family of a study on "
              "the held-out test split; `n/a` means that trial was not evaluated. AUCs are "
              "one-vs-rest macro averages; hours are trial wall time times resources per trial.",
              "", "Data: [leaderboard.csv](leaderboard.csv)", ""]
    return "\n".join(lines)


def write_report(experiment: str, out: Path, *, tracking_uri: str | None,
                 force: bool = False) -> Path:
    """Write leaderboard.csv, roc_families.png and README.md into ``out``; returns the page.

    The report is written into a temporary folder beside ``out`` and moved into place when
    complete, so a failure leaves ``out`` as it was. An existing ``out`` is replaced only with
    ``force`` (and only if it holds an earlier report)."""
    from tuner.tracking.store import mlflow_client

    out = Path(out)
    if out.exists() and not force:  # before any MLflow query
        raise PromotionError(f"{out} already exists; pass --force to replace it")
    client = mlflow_client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise PromotionError(f"no MLflow experiment named {experiment!r}")
    rows, _ = family_rows(client, exp.experiment_id)
    if not rows:
        raise PromotionError(f"experiment {experiment!r} has no trial runs (tag lenstune.kind=trial)")
    is_report = lambda p: (p / "README.md").is_file() and (p / "leaderboard.csv").is_file()  # noqa: E731
    with staged_folder(out, force=force, replaceable=is_report, error=PromotionError,
                       kind="a lenstune report (no README.md and leaderboard.csv)") as tmp:
        with (tmp / "leaderboard.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        plotted = plot_family_rocs(client, rows, tmp / "roc_families.png")
        (tmp / "README.md").write_text(markdown_page(experiment, rows, plotted))
    return out / "README.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lenstune report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", required=True, help="MLflow experiment name")
    parser.add_argument("--out", type=Path, required=True, help="folder for the report")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing report in --out")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                        "sqlite:///runs/mlflow.db)")
    args = parser.parse_args(argv)
    from tuner.tracking.store import check_tracking_store, default_tracking_uri, quiet_mlflow

    quiet_mlflow()
    uri = args.tracking_uri or default_tracking_uri()
    try:
        check_tracking_store(uri)
        page = write_report(args.experiment, args.out, tracking_uri=uri, force=args.force)
    except (PromotionError, OSError) as exc:  # no such experiment or study, --out unusable
        return error("report", str(exc), EXIT_USAGE)
    print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
