"""A runs folder that cannot take the study's files, as a user meets it: on a read-only file
system, or on a disk that fills up mid-study (a small tmpfs here). One line names the folder
and the cause; a read-only folder is refused before anything is written (exit 2); a full one
stops the study (exit 1) and ``--resume`` finishes it once there is room, leaving no run open,
also when the disk tore one of the state files Tune saved (its last good copy is restored).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.study.studies import REPO, ray_env, run_args, trial_runs

pytestmark = pytest.mark.slow


def _mount_tmpfs(folder: Path, options: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"cannot mount a tmpfs at {folder}: {done.stderr}"


@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def mount(name: str, options: str) -> Path:
        folder = tmp_path / name
        _mount_tmpfs(folder, options)
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from tuner.data import ensure_simulated

    return ensure_simulated(tmp_path_factory.mktemp("data") / "micro", "model_ii", 30, seed=0,
                            img_size=32)


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("lenstune tune: error:")]


def test_a_read_only_runs_folder_is_refused_before_anything_is_written(dataset, tmpfs):
    folder = tmpfs("ro", "ro,size=1m")
    runs = folder / "runs"
    proc = subprocess.run(run_args(dataset, runs, "vit", samples=2), cwd=REPO, env=ray_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-3000:]
    assert _error_lines(proc.stderr) == [
        f"lenstune tune: error: runs folder {runs} is not writable (read-only file system); "
        "pass another --runs-dir or free the folder"]
    assert "Traceback" not in proc.stderr and list(folder.iterdir()) == []


def test_a_full_disk_stops_the_study_and_resume_finishes_it(dataset, tmpfs):
    folder = tmpfs("small", "size=3m")
    runs = folder / "runs"
    args = run_args(dataset, runs, "vit", samples=4, extra=("--max-epochs", "3", "--no-promote"))
    proc = subprocess.run(args, cwd=REPO, env=ray_env(), capture_output=True, text=True,
                          timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-4000:]
    errors = _error_lines(proc.stderr)
    assert len(errors) == 1, output[-4000:]
    assert errors[0].startswith(f"lenstune tune: error: cannot write to runs folder {runs}")
    assert "no space left on the device" in errors[0] and "--resume" in errors[0]

    # Tune copies its state files to the storage one by one, not atomically: a full disk can
    # tear one (seen here). Tear the experiment state on purpose so --resume must use its copy.
    states = sorted((runs / "studies").glob("*/vit/experiment_state-*.json"))
    assert states and (states[-1].parent / (states[-1].name + ".lenstune-good")).is_file()
    states[-1].write_bytes(states[-1].read_bytes()[:100])

    subprocess.run(["mount", "-o", "remount,size=300m", str(folder)], check=True)
    again = subprocess.run([*args, "--resume"], cwd=REPO, env=ray_env(), capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    studies, trials = trial_runs(f"sqlite:///{runs / 'mlflow.db'}")
    assert [s.info.status for s in studies] == ["FINISHED"]
    assert len(trials) == 4 and all(t.info.status != "RUNNING" for t in trials)
    assert {t.data.tags.get("stop_reason") for t in trials} <= {"completed", "asha_stopped"}
