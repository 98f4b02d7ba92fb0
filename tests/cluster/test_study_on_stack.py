"""A micro study on the production tracking stack (PostgreSQL + S3), then promotion and loading
the champion back from S3."""

from __future__ import annotations

import subprocess

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests import servers
from tests.cluster.conftest import ray_env, study_command

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack_study(tracking_stack, micro_dataset, tmp_path_factory):
    import shutil
    import tempfile
    from pathlib import Path

    tmp = tmp_path_factory.mktemp("stack-study")
    ray_tmp = Path(tempfile.mkdtemp(prefix="lt-ray-", dir="/tmp"))
    # Promotion is exercised explicitly below, against the same stack.
    cmd = study_command(tracking_stack.tracking_uri, "stack-study", micro_dataset, tmp / "runs", "--no-promote")
    try:
        result = subprocess.run(cmd, env=ray_env(tmp, ray_tmp), capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return tracking_stack


def test_every_trial_logs_to_postgres_and_checkpoints_to_s3(stack_study):
    client = MlflowClient(stack_study.tracking_uri)
    experiment = client.get_experiment_by_name("stack-study")
    runs = client.search_runs([experiment.experiment_id])
    studies = [r for r in runs if r.data.tags.get("lenstune.kind") == "study"]
    trials = [r for r in runs if r.data.tags.get("lenstune.kind") == "trial"]
    assert len(studies) == 1 and len(trials) == 2
    for trial in trials:
        assert trial.data.tags["mlflow.parentRunId"] == studies[0].info.run_id
        assert trial.data.tags["stop_reason"] in {"completed", "asha_stopped"}
        assert "val_auc_macro" in trial.data.metrics
    keys = servers.list_objects(stack_study.s3_endpoint, stack_study.bucket)
    for trial in trials:
        assert any(k.endswith(f"{trial.info.run_id}/artifacts/checkpoint/model.safetensors") for k in keys)


def test_promotion_registers_the_champion_and_it_loads_back_from_s3(stack_study, micro_dataset, tmp_path):
    from tuner.data import load_split
    from tuner.registry.promotion import promote_champion
    from tuner.registry.pyfunc import load_registered

    result = promote_champion("stack-study", tracking_uri=stack_study.tracking_uri, echo=lambda _: None)
    assert result.decision == "promoted"
    client = MlflowClient(stack_study.tracking_uri)
    champion = client.get_model_version_by_alias(result.model_name, "champion")
    assert str(champion.version) == result.version
    again = promote_champion("stack-study", tracking_uri=stack_study.tracking_uri, echo=lambda _: None)
    assert again.decision == "unchanged"
    # The registered files are in the S3 bucket, not on the server's disk.
    keys = servers.list_objects(stack_study.s3_endpoint, stack_study.bucket)
    assert any(f"{result.trial_run_id}/artifacts/registered_model/" in k for k in keys)

    model, config = load_registered(f"models:/{result.model_name}@champion",
                                    tracking_uri=stack_study.tracking_uri, dst_dir=tmp_path / "model")
    images = load_split(micro_dataset, "test").images[:4]
    with torch.no_grad():
        probs = torch.softmax(model(images.float()), dim=1)
    assert probs.shape == (4, 3)
    assert torch.allclose(probs.sum(dim=1), torch.ones(4), atol=1e-5)
