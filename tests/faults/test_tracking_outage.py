"""The tracking server goes away during a study, as users run it: ``python tuner/run.py`` against
an ``mlflow server`` on loopback (artifacts through the server), killed once the first trial
has logged an epoch.

- Back after 60 s: the study finishes (exit 0) and nothing is lost: every trial has one metric
  point per epoch it trained, its stop reason, its artifacts and plots; no run is left open.
- Never back: the study stops cleanly within its limit (``--tracking-outage-limit``) plus 30 s:
  exit 1 and one line that says what happened and what to do. Once the server is back,
  ``--resume`` sends what waited on disk, finishes the study and leaves no run open.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.servers import free_port, mlflow_server
from tests.study.studies import REPO, check_trial_runs, ray_env, run_args, trial_runs

pytestmark = pytest.mark.slow

EPOCHS = 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from tuner.data import ensure_simulated

    return ensure_simulated(tmp_path_factory.mktemp("data") / "micro", "model_ii", 60, seed=0,
                            img_size=32)


def _start_study(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(args, cwd=REPO, env=ray_env(), stdout=out,
                                stderr=subprocess.STDOUT, text=True)


def _wait_for_first_epoch(uri: str, study: subprocess.Popen, log: Path, timeout_s: float = 300):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert study.poll() is None, log.read_text()[-3000:]
        try:
            _, trials = trial_runs(uri)
            if any(MlflowClient(uri).get_metric_history(r.info.run_id, "val_auc_macro")
                   for r in trials):
                return
        except Exception:  # the experiment may not exist yet
            pass
        time.sleep(1)
    raise TimeoutError("no trial logged an epoch")


def _server(backend: str, artifacts: Path, port: int):
    return mlflow_server(backend, artifacts_destination=str(artifacts), port=port)


def _no_open_runs(uri: str) -> None:
    studies, trials = trial_runs(uri)
    assert [r.info.status for r in studies] == ["FINISHED"]
    assert [r.data.tags["trial_id"] for r in trials if r.info.status == "RUNNING"] == []


def test_an_outage_of_60_s_loses_nothing(dataset, tmp_path):
    backend, artifacts = f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts"
    port = free_port()
    runs, log = tmp_path / "runs", tmp_path / "study.log"
    with _server(backend, artifacts, port) as server:
        args = run_args(dataset, runs, "vit", samples=6,
                        extra=("--max-epochs", str(EPOCHS), "--tracking-uri", server.uri,
                               "--no-promote"))
        study = _start_study(args, log)
        _wait_for_first_epoch(server.uri, study, log)
    killed = time.monotonic()  # the server is stopped here
    try:
        time.sleep(60)
        assert study.poll() is None, "the study ended during the outage:\n" + log.read_text()[-3000:]
        with _server(backend, artifacts, port) as server:
            rc = study.wait(timeout=900)
            text = log.read_text()
            assert rc == 0, text[-4000:]
            assert time.monotonic() - killed > 60
            studies, trials = trial_runs(server.uri)
            assert len(studies) == 1 and len(trials) == 6
            check_trial_runs(server.uri, trials, studies[0].info.run_id, EPOCHS)
            _no_open_runs(server.uri)
            assert not list((runs / "outbox").rglob("*.jsonl"))  # everything was sent
    finally:
        if study.poll() is None:
            study.kill()


def test_a_server_that_never_comes_back_stops_the_study_cleanly_and_resume_closes_it(
        dataset, tmp_path):
    backend, artifacts = f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "artifacts"
    port = free_port()
    runs, log = tmp_path / "runs", tmp_path / "study.log"
    limit = 20
    with _server(backend, artifacts, port) as server:
        uri = server.uri
        args = run_args(dataset, runs, "vit", samples=8,
                        extra=("--max-epochs", str(EPOCHS), "--tracking-uri", uri,
                               "--no-promote", "--tracking-outage-limit", str(limit)))
        study = _start_study(args, log)
        _wait_for_first_epoch(uri, study, log)
    killed = time.monotonic()
    try:
        rc = study.wait(timeout=limit + 120)
    finally:
        if study.poll() is None:
            study.kill()
    took = time.monotonic() - killed
    text = log.read_text()
    assert rc == 1, text[-4000:]
    assert took <= limit + 30, (took, text[-3000:])
    errors = [line for line in text.splitlines() if line.startswith("lenstune tune: error:")]
    assert len(errors) == 1 and "--resume" in errors[0] and "tracking server" in errors[0], text[-3000:]
    assert "Traceback" not in text.split(errors[0])[1]  # nothing after the line
    assert list((runs / "outbox").rglob("*.jsonl"))  # what could not be sent waits on disk

    with _server(backend, artifacts, port) as server:
        again = subprocess.run([*args, "--resume"], cwd=REPO, env=ray_env(), capture_output=True,
                               text=True, timeout=900)
        assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
        _no_open_runs(server.uri)
        studies, trials = trial_runs(server.uri)
        done = [r for r in trials if r.data.tags.get("stop_reason") in ("completed", "asha_stopped")]
        assert len(done) == 8, [(r.data.tags.get("trial_id"), r.data.tags.get("stop_reason"))
                                for r in trials]
        assert not list((runs / "outbox").rglob("*.jsonl"))
