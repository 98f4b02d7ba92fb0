"""The pages a user opens after a study, checked in Chromium: the experiment's runs table with
the study and its nested trials, the study's description, a trial's metric chart and system
metrics, its ROC and confusion-matrix images, two trials compared, the registered model with
its ``champion`` alias, and the report page with every image. A failure names what was missing
and where its screenshot is."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.browser.conftest import EXPERIMENT, MODEL_NAME, doc_image, printed_experiment_link

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(600)]

ML = "workflowType=machine_learning"


def shot(page, shots: Path, name: str, *, full_page: bool = False, doc: str | None = None) -> Path:
    path = shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    target = doc_image(doc) if doc else None
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return path


def must_see(locator, what: str, page, shots: Path, step: str, timeout_ms: int = 30_000) -> None:
    """Wait for ``locator`` to be visible, else fail naming ``what`` and the screenshot."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        locator.first.wait_for(state="visible", timeout=timeout_ms)
    except PlaywrightTimeout:
        path = shot(page, shots, f"{step}-FAILED", full_page=True)
        raise AssertionError(f"{what} is missing on {page.url} (screenshot: {path})") from None


def close_assistant(page) -> None:
    """MLflow 3.17 opens its assistant panel beside every page: close it for the pictures."""
    button = page.locator("button[aria-label='Close']")
    if button.count():
        button.first.click()


def chart_card(page, title: str):
    """The chart card of the MLflow run page titled ``title`` (the innermost element holding
    that title and a plotly chart)."""
    return (page.locator("div").filter(has=page.get_by_text(title, exact=True))
            .filter(has=page.locator(".js-plotly-plot")).last)


def run_name_cells(page):
    return page.locator("[role=gridcell][col-id='attributes.`Run Name`']")


def test_experiment_opens_on_runs_table_with_nested_trials(micro_study, ui, page, shots):
    link = printed_experiment_link(micro_study.stdout).replace("http://127.0.0.1:5000", ui)
    page.goto(link)
    study_row = run_name_cells(page).filter(has_text=micro_study.study_name)
    must_see(study_row, f"the study's parent run {micro_study.study_name!r} in the runs table",
             page, shots, "1-experiment")
    assert "/runs" in page.url, f"the printed link {link} opened {page.url}, not the runs table"
    close_assistant(page)
    study_row.locator("button").first.click()  # expand the parent run
    for family, run_ids in micro_study.trials.items():
        for run_id in run_ids:
            name = micro_study.run_names[run_id]
            must_see(run_name_cells(page).filter(has_text=name),
                     f"nested trial run {name!r} ({family}) under the study", page, shots,
                     "1-experiment")
    shot(page, shots, "1-experiment-runs-table", doc="mlflow_ui_runs.png")


def test_study_run_says_what_was_tuned(micro_study, ui, page, shots):
    page.goto(f"{ui}/#/experiments/{micro_study.experiment_id}/runs/{micro_study.study_run_id}?{ML}")
    must_see(page.get_by_text("tuned", exact=False), "the study's description (what was tuned)",
             page, shots, "2-study")
    for text in ("levit", "cvt", "Data:", "Champion:", f"models:/{MODEL_NAME}@champion"):
        must_see(page.get_by_text(text, exact=False), f"{text!r} in the study's description",
                 page, shots, "2-study")
    close_assistant(page)
    shot(page, shots, "2-study-description")


def test_trial_page_shows_metric_chart_and_system_metrics(micro_study, ui, page, shots):
    run_id = micro_study.trials["levit"][0]
    base = f"{ui}/#/experiments/{micro_study.experiment_id}/runs/{run_id}"
    page.goto(f"{base}/model-metrics?{ML}")
    page.get_by_placeholder("Search metric charts").fill("val_auc_macro")
    chart = chart_card(page, "val_auc_macro")
    must_see(chart, "the val_auc_macro chart of the trial", page, shots, "3-trial-metrics")
    assert chart.locator("path.js-line").count() > 0, "the val_auc_macro chart has no line"
    close_assistant(page)
    shot(page, shots, "3-trial-metric-chart")
    page.goto(f"{base}/system-metrics?{ML}")
    cpu = chart_card(page, "cpu_utilization_percentage")
    must_see(cpu, "the trial's system metrics (CPU utilisation chart)", page, shots,
             "3-trial-system")
    assert cpu.locator("g.trace").count() > 0, "the CPU chart has no data"
    close_assistant(page)
    shot(page, shots, "3-trial-system-metrics")


@pytest.mark.parametrize("artifact", ["roc_curves.png", "confusion_matrix.png"])
def test_trial_plots_load(micro_study, ui, page, shots, artifact):
    run_id = micro_study.trials["cvt"][0]
    url = (f"{ui}/#/experiments/{micro_study.experiment_id}/runs/{run_id}/artifacts/"
           f"{artifact}?{ML}")
    with page.expect_response(lambda r: "get-artifact" in r.url and artifact in r.url) as answer:
        page.goto(url)
    must_see(page.get_by_text(f"Path: "), f"the {artifact} preview", page, shots, f"4-{artifact}")
    try:  # the preview is an <img> of the fetched file (a blob: URL); the logo is smaller
        page.wait_for_function("() => Array.from(document.images).some("
                               "i => i.complete && i.naturalWidth >= 300)", timeout=30_000)
    except Exception:
        path = shot(page, shots, f"4-{artifact}-FAILED")
        raise AssertionError(f"the {artifact} image did not load on {page.url} (screenshot: "
                             f"{path})") from None
    # the URL the page loaded, fetched again: the browser keeps no body of an <img> response
    response = page.request.get(answer.value.url)
    body = response.body()
    assert response.status == 200 and len(body) > 1000, (
        f"{artifact} of trial {run_id}: HTTP {response.status}, {len(body)} bytes")
    close_assistant(page)
    shot(page, shots, f"4-trial-{artifact.removesuffix('.png')}")


def test_compare_view_of_two_trials_renders(micro_study, ui, page, shots):
    pair = [micro_study.trials["levit"][0], micro_study.trials["cvt"][0]]
    page.goto(f"{ui}/#/compare-runs?runs={json.dumps(pair)}&experiments="
              f"{json.dumps([micro_study.experiment_id])}")
    must_see(page.get_by_text("Comparing 2 Runs"), "the compare view's title", page, shots,
             "5-compare")
    for run_id in pair:
        must_see(page.get_by_text(micro_study.run_names[run_id], exact=True),
                 f"trial {micro_study.run_names[run_id]} in the comparison", page, shots, "5-compare")
    must_see(page.locator(".js-plotly-plot"), "the compare view's plot", page, shots, "5-compare")
    close_assistant(page)
    shot(page, shots, "5-compare-two-trials")


def test_registered_model_shows_version_and_champion(micro_study, ui, page, shots):
    page.goto(f"{ui}/#/models/{MODEL_NAME}")
    must_see(page.get_by_text("Version 1"), f"version 1 of {MODEL_NAME}", page, shots, "6-model")
    must_see(page.get_by_text(re.compile(r"^\W*champion$")), "the champion alias", page, shots,
             "6-model")
    close_assistant(page)
    shot(page, shots, "6-registered-model")


def test_report_page_loads_with_all_images(micro_study, page, shots):
    index = micro_study.report / "index.html"
    assert index.is_file(), f"lenstune report wrote no {index}"
    requested = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(index.as_uri())
    page.wait_for_load_state("load")
    for key, what in (("leaderboard", "leaderboard"), ("roc", "ROC per family"),
                      ("curves", "learning curves"), ("importances", "parameter importances"),
                      ("calibration", "calibration of the champion")):
        must_see(page.locator(f"section#{key}"), f"the report's {what} section", page, shots,
                 "7-report")
    images = page.evaluate("Array.from(document.images).map(i => [i.id, i.complete, i.naturalWidth])")
    assert len(images) >= 5, f"the report shows {len(images)} images: {images}"
    broken = [name for name, complete, width in images if not complete or width == 0]
    assert not broken, f"report images that did not load: {broken}"
    for family in ("levit", "cvt"):
        must_see(page.locator("section#leaderboard td", has_text=family),
                 f"{family} in the leaderboard", page, shots, "7-report")
    outside = [url for url in requested if not url.startswith(("file:", "data:"))]
    assert not outside, f"the report fetched from the network: {outside}"
    shot(page, shots, "7-report-page", full_page=True)
    page.locator("section#curves").scroll_into_view_if_needed()
    shot(page, shots, "7-report-learning-curves", doc="report.png")
    assert EXPERIMENT in page.title()
