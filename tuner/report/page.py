"""The report folder: ``index.html`` (one self-contained page, every image inline, nothing
fetched from the network), ``README.md`` (the leaderboard in Markdown), ``leaderboard.csv`` and
the figures as PNG files beside them. Written whole or not at all, then logged to the study
run (``report/``), where MLflow's artifact view shows the page too.
"""

from __future__ import annotations

import base64
import csv
import html
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from tuner.data.staging import staged_folder
from tuner.progress import progress
from tuner.report import collect, figures
from tuner.tracking import schema
from tuner.tracking.reader import PromotionError, StudyNotFoundError, find_study

COLUMNS = ("family", "trials", "completed", "best_val_auc", "test_auc", "test_acc", "test_ece",
           "test_nll", "epochs", "cpu_hours", "gpu_hours")
PAGE = "index.html"


@dataclass
class Section:
    """One part of the page: a heading, a sentence of what it shows, figures, an HTML table."""

    key: str
    title: str
    text: str
    images: list[Path] = field(default_factory=list)
    table: str = ""


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if value >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def markdown_page(experiment: str, rows: list[dict], plotted: list[str]) -> str:
    """The Markdown page: leaderboard table, ROC figure, how the numbers were obtained."""
    lines = [f"# lenstune results: experiment `{experiment}`", "",
             f"The full page with every figure: [{PAGE}]({PAGE}).", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(r[c]) for c in COLUMNS) + " |" for r in rows]
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


def _html_table(rows: list[dict], columns: tuple[str, ...]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in columns)
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _inline(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1300px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th:first-child,td:first-child{text-align:left}thead{background:#f0f0f0}img{max-width:100%;border:1px solid #ddd;margin:.4em 0}
nav a{margin-right:1em}section{margin-top:2em}p.note{color:#555;font-size:14px}code{background:#f4f4f4;padding:0 3px}"""


def html_page(title: str, header: str, sections: list[Section]) -> str:
    """The page: a navigation bar, then each section with its figures inline (data URIs)."""
    nav = " ".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in sections)
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p class='note'>{header}</p><nav>{nav}</nav>"]
    for s in sections:
        parts.append(f"<section id='{s.key}'><h2>{html.escape(s.title)}</h2><p class='note'>{s.text}</p>")
        parts.append(s.table)
        parts += [f"<figure><img id='{s.key}-{i}' src='{_inline(p)}' alt='{html.escape(p.stem)}'>"
                  f"<figcaption><a href='{html.escape(p.name)}'>{html.escape(p.name)}</a></figcaption></figure>"
                  for i, p in enumerate(s.images)]
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _study_sections(client, study, rows: list[dict], tmp: Path, tracking_uri: str | None,
                    bar) -> list[Section]:
    """The sections about one study: learning curves, importances, calibration, extras."""
    sid, experiment_id = study.info.run_id, study.info.experiment_id
    sections = []
    bar.set_postfix_str("learning curves")
    curves = collect.trial_curves(client, experiment_id, sid)
    if curves:
        decides_at, decisions = collect.decision_epochs(client, sid)
        top = sorted((c for c in curves if c.values), key=lambda c: -max(c.values))[:20]
        table_rows = [{"family": c.family, "trial": c.trial_id, "stop_reason": c.stop_reason,
                       "epochs": len(c.values), "best_val_auc": max(c.values)} for c in top]
        where = (f" Dotted lines are {decides_at}: the only epochs where the scheduler stops, "
                 "pauses or copies a trial." if decides_at else "")
        sections.append(Section(
            "curves", "Learning curves",
            "Validation macro AUC per epoch of every trial of the study; the last point of a "
            "trial shows how it ended (the legend names each marker: completed its budget, "
            "stopped by the strategy's scheduler, stopped with the study, failed)." + where +
            " The table lists the study's best 20 trials.",
            [figures.plot_learning_curves(curves, decisions, tmp / "learning_curves.png",
                                          decides_at)],
            _html_table(table_rows, ("family", "trial", "stop_reason", "epochs", "best_val_auc"))))
    bar.update()
    bar.set_postfix_str("importances")
    values = collect.importances(client, sid)
    if values:
        sections.append(Section(
            "importances", "Parameter importances",
            "fANOVA importance (Optuna) of each tuned parameter for the best validation macro "
            "AUC of each family's trials: which settings mattered.",
            [figures.plot_importances(values, tmp / "param_importances.png")]))
    bar.update()
    bar.set_postfix_str("calibration")
    champion = collect.champion_probs(client, study, tracking_uri)
    if champion is not None:
        sections.append(Section(
            "calibration", "Calibration of the champion",
            f"{html.escape(champion.label)} on the held-out test split: how far its confidence "
            "is from its accuracy (ECE), how confident it is, and each class's one-vs-rest "
            "reliability. `lenstune uncertainty` recalibrates it.",
            [figures.plot_calibration(champion, tmp / "calibration_champion.png")]))
    bar.update()
    bar.set_postfix_str("robustness and Pareto")
    extras = collect.study_pictures(client, sid, tmp / ".extras")
    for kind, title in ((schema.ROBUSTNESS_ARTIFACT, "Robustness"), (schema.PARETO_ARTIFACT, "Pareto fronts")):
        if kind in extras:
            pictures = []
            for p in extras[kind]:
                pictures.append(tmp / f"{kind}_{p.name}")
                p.rename(pictures[-1])
            sections.append(Section(kind, title, f"The figures the study logged under "
                                    f"<code>{kind}/</code>.", pictures))
    shutil.rmtree(tmp / ".extras", ignore_errors=True)
    bar.update()
    return sections


def write_report(experiment: str, out: Path, *, tracking_uri: str | None, force: bool = False,
                 study_run_id: str | None = None, log_to_study: bool = True) -> Path:
    """Write the report folder ``out`` (see the module docstring); returns its ``index.html``.

    The leaderboard covers every trial of the experiment; learning curves, importances, the
    champion's calibration and the robustness and Pareto figures are of one study (``study_run_id``,
    default the newest), to whose run the folder is logged unless ``log_to_study`` is False.
    The folder is staged beside ``out`` and moved into place complete; an existing ``out`` is
    replaced only with ``force`` and only if it holds an earlier report."""
    from tuner.tracking.store import mlflow_client

    out = Path(out)
    if out.exists() and not force:  # before any MLflow query
        raise PromotionError(f"{out} already exists; pass --force to replace it")
    client = mlflow_client(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise PromotionError(f"no MLflow experiment named {experiment!r}")
    rows, best = collect.family_rows(client, exp.experiment_id)
    if not rows:
        raise PromotionError(f"experiment {experiment!r} has no trial runs (tag lenstune.kind=trial)")
    try:
        study = find_study(client, experiment, study_run_id)
    except StudyNotFoundError:
        if study_run_id:
            raise
        study = None
    is_report = lambda p: (p / "README.md").is_file() and (p / "leaderboard.csv").is_file()  # noqa: E731
    with staged_folder(out, force=force, replaceable=is_report, error=PromotionError,
                       kind="a lenstune report (no README.md and leaderboard.csv)") as tmp, \
            progress(total=7, desc="report", unit="step") as bar:
        bar.set_postfix_str("leaderboard")
        with (tmp / "leaderboard.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=collect.FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        bar.update()
        bar.set_postfix_str("ROC curves")
        class_names = _class_names(client, best)
        rocs = collect.family_rocs(client, rows, class_names)
        plotted = figures.plot_family_rocs(rows, rocs, tmp / "roc_families.png")
        (tmp / "README.md").write_text(markdown_page(experiment, rows, plotted))
        sections = [Section(
            "leaderboard", "Leaderboard across families",
            "One row per family: trials run and completed, the best validation macro AUC of a "
            "completed trial, that trial's test metrics (from promotion, which evaluates every "
            "family's best; n/a when not evaluated), epochs, and compute (trial wall time times "
            "the CPUs and GPUs per trial). Best test AUC first. "
            "<a href='leaderboard.csv'>leaderboard.csv</a>",
            table=_html_table(rows, COLUMNS) + _params_list(rows))]
        roc_images = [tmp / "roc_families.png"] if plotted else []
        if rocs:
            roc_images.append(figures.plot_roc_per_family(rocs, tmp / "roc_per_family.png"))
        sections.append(Section(
            "roc", "ROC per family",
            "Each family's best trial: the macro one-vs-rest test ROC side by side, then each "
            "class's curve (test where promotion evaluated the trial, else validation at its "
            "best epoch).", roc_images))
        bar.update()
        if study is not None:
            sections += _study_sections(client, study, rows, tmp, tracking_uri, bar)
        bar.set_postfix_str("page")
        header = (f"Experiment <code>{html.escape(experiment)}</code> (id {exp.experiment_id})"
                  + (f", study <code>{html.escape(study.info.run_name or '')}</code> (run "
                     f"<code>{study.info.run_id}</code>)" if study is not None else "")
                  + f"; written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from "
                  "MLflow. Images are inline: the page needs no network.")
        (tmp / PAGE).write_text(html_page(f"lenstune report: {experiment}", header, sections))
        bar.update()
    if log_to_study and study is not None:
        client.log_artifacts(study.info.run_id, str(out), schema.REPORT_ARTIFACT)
    return out / PAGE


def _params_list(rows: list[dict]) -> str:
    items = "".join(f"<li><b>{html.escape(r['family'])}</b> (run <code>{r['run_id']}</code>): "
                    f"{html.escape(r['params'] or '-')}</li>" for r in rows if r["run_id"])
    return f"<p class='note'>Hyperparameters of each family's best trial:</p><ul>{items}</ul>" if items else ""


def _class_names(client, best: dict) -> list[str] | None:
    """Class names from a best trial's resolved config (``config.json``), if any."""
    import json
    import tempfile

    for trial in best.values():
        try:
            with tempfile.TemporaryDirectory() as tmp:
                local = client.download_artifacts(trial.run_id, schema.CONFIG_ARTIFACT, tmp)
                return list(json.loads(Path(local).read_text())["class_names"])
        except Exception:  # noqa: BLE001 - fall back to class indices
            continue
    return None
