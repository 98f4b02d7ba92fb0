"""Autoscaling on the fake multi-node GPU cluster (cluster/local-fake-gpu.yaml).

Ray's own autoscaler with the ``fake_multinode`` provider: a head without GPUs, GPU worker
"nodes" started as extra Ray processes on this machine when trials ask for ``{"GPU": 1}``.
The cluster is started on free ports in its own session and stopped by that session's
process ids, but it still costs ~4 GiB and restarts worker nodes: run alone (`-m alone`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests import servers
from tests.cluster.conftest import REPO, ray_env, study_command

pytestmark = [pytest.mark.slow, pytest.mark.alone]


def _session_pids(sid: int) -> list[int]:
    """Processes of session ``sid`` (everything `ray start` spawned, worker nodes included)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
    return pids


def _stop_session(sid: int, timeout_s: float = 30) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _session_pids(sid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout_s
        while _session_pids(sid) and time.monotonic() < deadline:
            time.sleep(0.5)
        if not _session_pids(sid):
            return


@contextlib.contextmanager
def fake_gpu_cluster(ray_tmp: Path, env: dict[str, str]):
    """Head node of cluster/local-fake-gpu.yaml on a free port; yields the GCS address."""
    port = servers.free_port()
    config = yaml.safe_load((REPO / "cluster" / "local-fake-gpu.yaml").read_text())
    config["provider"]["gcs_address"] = f"{servers.LOOPBACK}:{port}"
    config_path = ray_tmp / "autoscaling.yaml"
    config_path.write_text(yaml.safe_dump(config))
    head = config["available_node_types"][config["head_node_type"]]["resources"]
    cmd = [
        str(Path(sys.executable).parent / "ray"), "start", "--head",
        f"--node-ip-address={servers.LOOPBACK}", f"--port={port}",
        f"--num-cpus={head.get('CPU', 0)}", "--num-gpus=0", f"--autoscaling-config={config_path}",
        "--include-dashboard=false", f"--ray-client-server-port={servers.free_port()}",
        f"--dashboard-agent-listen-port={servers.free_port()}", "--disable-usage-stats",
    ]
    starter = subprocess.Popen(
        cmd, env={**env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"},
        start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        out, _ = starter.communicate(timeout=120)
        assert starter.returncode == 0, out[-3000:]
        yield f"{servers.LOOPBACK}:{port}"
    finally:
        _stop_session(starter.pid)


def _gpu_nodes(ray) -> int:
    return sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0)


def test_gpu_trials_scale_the_fake_cluster_up_and_back_down(micro_dataset, tmp_path, ray_tmp, monkeypatch):
    import ray

    env = ray_env(tmp_path, ray_tmp)
    with fake_gpu_cluster(ray_tmp, env) as address:
        for key in ("RAY_TMPDIR", "RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED"):
            monkeypatch.setenv(key, env[key])
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        try:
            assert _gpu_nodes(ray) == 0, "the cluster must start without GPU workers"
            tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
            cmd = study_command(tracking, "autoscale", micro_dataset, tmp_path / "runs",
                                "--gpus-per-trial", "1")
            study = subprocess.Popen(cmd, env={**env, "RAY_ADDRESS": address},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            peak, deadline = 0, time.monotonic() + 600
            while study.poll() is None and time.monotonic() < deadline:
                peak = max(peak, _gpu_nodes(ray))
                time.sleep(1)
            if study.poll() is None:
                study.kill()
            out = study.communicate()[0]
            assert study.returncode == 0, out[-5000:]
            assert peak >= 1, "the autoscaler never added a GPU node"

            client = MlflowClient(tracking)
            experiment = client.get_experiment_by_name("autoscale")
            trials = [r for r in client.search_runs([experiment.experiment_id])
                      if r.data.tags.get("lenstune.kind") == "trial"]
            assert len(trials) == 2
            assert all(t.data.tags["stop_reason"] in {"completed", "asha_stopped"} for t in trials)
            assert all(t.info.status == "FINISHED" for t in trials)

            # Idle GPU nodes go away after idle_timeout_minutes (6 s) plus a few update rounds.
            deadline = time.monotonic() + 120
            while _gpu_nodes(ray) and time.monotonic() < deadline:
                time.sleep(1)
            assert _gpu_nodes(ray) == 0, "idle GPU nodes were not removed"
        finally:
            ray.shutdown()
