"""The production tracking stack: MLflow server on PostgreSQL with artifacts in S3 (moto)."""

from __future__ import annotations

import psycopg2
import pytest
from mlflow.tracking import MlflowClient

from tests import servers

pytestmark = pytest.mark.slow


def test_run_and_artifact_land_in_postgres_and_s3(tracking_stack, tmp_path):
    client = MlflowClient(tracking_stack.tracking_uri)
    experiment_id = client.create_experiment("stack-smoke")
    run = client.create_run(experiment_id, tags={"lenstune.kind": "smoke"})
    client.log_param(run.info.run_id, "train.lr", 0.001)
    client.log_metric(run.info.run_id, "val_auc_macro", 0.75, step=1)
    (tmp_path / "note.txt").write_text("checkpoint stand-in")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"), artifact_path="checkpoint")
    client.set_terminated(run.info.run_id)

    # The run is in PostgreSQL ...
    with psycopg2.connect(tracking_stack.postgres_uri) as conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_uuid = %s", (run.info.run_id,))
        assert cur.fetchone() == ("FINISHED",)
        cur.execute("SELECT value FROM params WHERE run_uuid = %s AND key = 'train.lr'", (run.info.run_id,))
        assert cur.fetchone() == ("0.001",)
    # ... its artifact in the S3 bucket, under the run's id ...
    keys = servers.list_objects(tracking_stack.s3_endpoint, tracking_stack.bucket)
    assert any(k.endswith(f"{run.info.run_id}/artifacts/checkpoint/note.txt") for k in keys), keys
    # ... and it reads back through the server.
    local = client.download_artifacts(run.info.run_id, "checkpoint/note.txt", str(tmp_path / "back"))
    assert open(local).read() == "checkpoint stand-in"
