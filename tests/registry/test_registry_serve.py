"""`mlflow models serve` of the champion on 127.0.0.1: probabilities sum to 1 and match
`lenstune predict`; bad input is answered with an error, not a prediction."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tuner.data import load_split
from tuner.cli.predict import main as predict_main

CHAMPION = "models:/lenstune-model_ii@champion"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture()
def served(promoted, tracking, tmp_path):
    uri, _, _ = tracking
    port = _free_port()
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    # the server runs `uvicorn` from PATH: put this interpreter's scripts first
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [mlflow_bin, "models", "serve", "-m", CHAMPION, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(base + "/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("server did not start:\n" + (tmp_path / "serve.log").read_text()[-3000:])
            time.sleep(0.5)
        yield base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (it forks workers)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_served_champion_matches_lenstune_predict(served, tracking, toy_data, tmp_path):
    images = load_split(toy_data, "test").images[:5].numpy().copy()
    status, body = _post(served + "/invocations", {"inputs": images.tolist()})
    assert status == 200, body
    served_frame = pd.DataFrame(body["predictions"])
    probs = served_frame[["prob_no_sub", "prob_cdm", "prob_axion"]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)

    np.save(tmp_path / "x.npy", images)
    assert predict_main([str(tmp_path / "x.npy"), "--model", CHAMPION, "--out",
                         str(tmp_path / "p.csv"), "--tracking-uri", tracking[0]]) == 0
    cli = pd.read_csv(tmp_path / "p.csv")
    np.testing.assert_allclose(probs, cli[["prob_no_sub", "prob_cdm", "prob_axion"]].to_numpy(),
                               atol=1e-6)
    assert list(served_frame["predicted_class"]) == list(cli["predicted_class"])

    bad = images.copy()
    bad[0, 0, 0, 0] = np.nan
    status, body = _post(served + "/invocations", {"inputs": bad.tolist()})
    assert status >= 400 and "predictions" not in body
    status, body = _post(served + "/invocations", {"inputs": images[:, :, :10, :10].tolist()})
    assert status >= 400 and "predictions" not in body
