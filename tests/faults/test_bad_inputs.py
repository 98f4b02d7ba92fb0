"""Bad input to a study, as a user types it: one line naming the bad value and what is allowed
(``lenstune tune: error: ...``), exit 2, nothing written, no traceback. (Bad images, models and
DeepLense folders are refused the same way by their commands: tests/faults/test_integrity.py,
tests/data/test_data_deeplense.py, which also checks that a pickled payload never runs.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.study.studies import REPO, ray_env


def _study(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tuner/run.py", *args, "--runs-dir",
                           str(tmp_path / "runs")], cwd=REPO, env=ray_env(),
                          capture_output=True, text=True, timeout=120)


def _files(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


CASES = {
    "bad flag value": (lambda t: ["--samples", "x"], "argument --samples: invalid int value: 'x'"),
    "bad config value": (lambda t: ["--samples", "0"], "samples=0"),
    "unknown family": (lambda t: ["--family", "vit,nosuch"], "unknown family 'nosuch'; allowed: all, vit"),
    "bad YAML": (lambda t: ["--config", str(_files(t, "bad.yaml", "samples: [1\n"))],
                 "is not valid YAML: expected ',' or ']'"),
    "unknown config key": (lambda t: ["--config", str(_files(t, "key.yaml", "sampels: 3\n"))],
                           "sampels=3: Extra inputs are not permitted"),
    "missing config file": (lambda t: ["--config", str(t / "none.yaml")], "does not exist"),
    "empty data folder": (lambda t: ["--data", str((t / "empty").resolve()), "--profile", "micro"],
                          "meta.json does not exist"),
    "huge image size": (lambda t: ["--img-size", "100000", "--profile", "micro"],
                        "img_size 100000 exceeds preset model_ii's 64 px; allowed: 8..64"),
    "bad outage limit": (lambda t: ["--tracking-outage-limit", "0"], "tracking_outage_limit_s=0"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_study_input_is_one_line_and_exit_2(tmp_path, case):
    (tmp_path / "empty").mkdir()
    make_args, expected = CASES[case]
    proc = _study(tmp_path, *make_args(tmp_path))
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("lenstune tune: error: ") and expected in lines[-1], lines[-3:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()
