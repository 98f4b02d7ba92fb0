"""Two of the same command at once, as two users (or two terminals) would start them.

- Two studies at the same moment on a new embedded store (``--runs-dir`` that does not exist
  yet): both finish; the store is created once; each study has its own name, its own parent
  run and exactly its own trials.
- Two ``lenstune promote`` of the same study at the same moment: the trial is registered once.
- ``--study-name`` of a study that exists, without ``--resume``: refused before anything is
  written; a study never adds its trials to another's parent run.
"""

from __future__ import annotations

import subprocess

import pytest
from mlflow import MlflowClient

from tests.study.studies import PYTHON, REPO, ray_env, run_args, trial_runs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from tuner.data import ensure_simulated

    return ensure_simulated(tmp_path_factory.mktemp("data") / "micro", "model_ii", 30, seed=0,
                            img_size=32)


@pytest.fixture(scope="module")
def two_studies(dataset, tmp_path_factory):
    """Two micro studies started together on one new runs folder; (runs folder, results)."""
    runs = tmp_path_factory.mktemp("shared") / "runs"  # does not exist yet: a new store
    args = run_args(dataset, runs, "vit", samples=2, local_cpus=1,
                    extra=("--max-epochs", "2", "--no-promote", "--max-failures", "0"))
    procs = [subprocess.Popen(args, cwd=REPO, env=ray_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=900) for p in procs]
    return runs, [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]


def test_two_studies_at_once_on_a_new_store_keep_apart(two_studies):
    runs, results = two_studies
    for rc, out, err in results:
        assert rc == 0, (out + err)[-4000:]
        assert "already exists" not in err
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    studies, trials = trial_runs(uri)
    assert len(studies) == 2 and len({s.data.tags["lenstune.study"] for s in studies}) == 2
    for study in studies:
        mine = [t for t in trials if t.data.tags["mlflow.parentRunId"] == study.info.run_id]
        assert len(mine) == 2, [t.data.tags for t in mine]
        assert {t.data.tags["lenstune.study"] for t in mine} == {study.data.tags["lenstune.study"]}
        assert study.info.status == "FINISHED"
    for study in studies:  # each printed its own name
        assert sum(study.data.tags["lenstune.study"] in out for _, out, _ in results) == 1


def test_two_promotions_at_once_register_the_trial_once(two_studies):
    runs, _ = two_studies
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    studies, _ = trial_runs(uri)
    study = studies[0].info.run_id
    args = [PYTHON, "-m", "tuner.cli", "promote", "--experiment", "it", "--tracking-uri", uri,
            "--study", study]
    procs = [subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, (out + err)[-3000:]
    client = MlflowClient(uri, registry_uri=uri)
    versions = client.search_model_versions("name = 'lenstune-model_ii'")
    held = [v for v in versions if v.tags.get("lenstune.study_run_id") == study]
    assert len(held) == 1, [(v.version, v.tags.get("lenstune.trial_run_id")) for v in versions]
    said = " ".join(out for out, _ in outputs)
    assert "already holds trial" in said  # the second saw the first's registration


def test_a_taken_study_name_is_refused_without_resume(two_studies, dataset):
    runs, _ = two_studies
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    studies, trials = trial_runs(uri)
    name = studies[0].data.tags["lenstune.study"]
    args = run_args(dataset, runs, "vit", samples=2,
                    extra=("--max-epochs", "2", "--no-promote", "--study-name", name))
    proc = subprocess.run(args, cwd=REPO, env=ray_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"lenstune tune: error: study {name!r} exists in experiment 'it'; pass --resume to "
        "continue it, or another --study-name")
    assert trial_runs(uri)[1].__len__() == len(trials)  # nothing written
