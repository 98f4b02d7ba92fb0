"""What a user looks at, in a real browser: Playwright driving Debian's Chromium.

One micro study of two families is made the way users make it (``lenstune simulate``, then
``python tuner/run.py --family levit,cvt --profile micro ...``, then ``lenstune report``), the
MLflow UI is served on a free loopback port, and each test opens one page and checks what a
person would see. Every step writes a screenshot into ``runs/browser-tests/`` (or
``$LENSTUNE_SCREENSHOTS``) for a person to look at; with ``LENSTUNE_DOC_IMG=docs/img`` the
runs-table and report screenshots are also written there (the README's pictures).

Playwright's own browser download cannot be reached here: the tests use the Chromium that
``.ci/system-deps`` installs (``/usr/bin/chromium``, or ``$LENSTUNE_CHROMIUM``) and fail, not
skip, when it is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import mlflow_server
from tests.study.studies import REPO, ray_env

CHROMIUM = os.environ.get("LENSTUNE_CHROMIUM", "/usr/bin/chromium")
FAMILIES = ("levit", "cvt")  # the demo's families: they learn at 32 px within seconds
EXPERIMENT = "lenstune"
MODEL_NAME = "lenstune-model_ii"


@dataclass(frozen=True)
class MicroStudy:
    """A finished micro study: where its store and report are, and what the study printed."""

    tracking_uri: str
    experiment_id: str
    study_run_id: str
    study_name: str
    trials: dict[str, list[str]]  # family -> trial run ids, best first
    run_names: dict[str, str]  # run id -> run name
    report: Path
    stdout: str


def _run(args: list[str], what: str, timeout_s: float) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=REPO, env=ray_env(), capture_output=True, text=True,
                          timeout=timeout_s)
    assert proc.returncode == 0, (f"{what} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                                  f"{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def micro_study(tmp_path_factory) -> MicroStudy:
    """Dataset, study (two families, promoted) and report, each made by its user command."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("browser-study")
    data, runs = root / "data", root / "runs"
    lenstune = [sys.executable, "-m", "tuner.cli"]
    _run([*lenstune, "simulate", "--preset", "model_ii", "--n-per-class", "90", "--img-size", "32",
          "--out", str(data), "--quiet"], "lenstune simulate", 300)
    study = _run([sys.executable, "tuner/run.py", "--family", ",".join(FAMILIES), "--profile",
                  "micro", "--data", str(data), "--samples", "3", "--max-epochs", "4",
                  "--runs-dir", str(runs), "--num-cpus", "2", "--max-concurrent", "2",
                  "--experiment", EXPERIMENT], "python tuner/run.py", 600)
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    report = root / "report"
    _run([*lenstune, "report", "--experiment", EXPERIMENT, "--tracking-uri", uri, "--out",
          str(report)], "lenstune report", 300)
    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs_ = client.search_runs([experiment_id], max_results=100,
                               order_by=["metrics.best_val_auc_macro DESC"])
    study_run = next(r for r in runs_ if r.data.tags.get("lenstune.kind") == "study")
    trials = {f: [r.info.run_id for r in runs_ if r.data.tags.get("lenstune.kind") == "trial"
                  and r.data.tags.get("family") == f] for f in FAMILIES}
    assert all(trials.values()), f"a family has no trial runs: {trials}"
    return MicroStudy(uri, experiment_id, study_run.info.run_id, study_run.info.run_name, trials,
                      {r.info.run_id: r.info.run_name for r in runs_}, report, study.stdout)


@pytest.fixture(scope="session")
def ui(micro_study) -> str:
    """The MLflow UI on the study's store (``mlflow server``, which serves what ``mlflow ui``
    serves), on a free loopback port; stopped by its process group afterwards."""
    with mlflow_server(micro_study.tracking_uri) as server:
        yield server.uri


@pytest.fixture(scope="session", autouse=True)
def chromium_and_playwright() -> str:
    """Fail (never skip) before any study is made when the browser or Playwright is missing."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"Chromium is missing at {CHROMIUM}: the browser tests need Debian's "
                    "chromium (`bash .ci/system-deps` installs it; or set LENSTUNE_CHROMIUM)",
                    pytrace=False)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("the Python package playwright is missing: pip install -e '.[test]'",
                    pytrace=False)
    return CHROMIUM


@pytest.fixture(scope="session")
def browser(chromium_and_playwright):
    """Headless Debian Chromium under Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # root in a container: no sandbox; small /dev/shm: use /tmp
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def shots() -> Path:
    """The folder of this run's screenshots (emptied first)."""
    folder = Path(os.environ.get("LENSTUNE_SCREENSHOTS", REPO / "runs" / "browser-tests"))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def doc_image(name: str) -> Path | None:
    """Where to also write a README picture (``$LENSTUNE_DOC_IMG/<name>``), if asked."""
    folder = os.environ.get("LENSTUNE_DOC_IMG")
    return Path(folder) / name if folder else None


def printed_experiment_link(stdout: str) -> str:
    """The runs-table link the study printed (``.../#/experiments/<id>?workflowType=...``)."""
    found = re.search(r"http://\S+/#/experiments/\S+", stdout)
    assert found, f"the study printed no MLflow UI link:\n{stdout[-2000:]}"
    return found.group(0)
