#!/bin/sh
# One-shot setup of the tracking stack's MinIO (docker/compose.yaml, service minio-bucket), safe
# to run again: the artifact bucket (mlflow), the Ray Tune storage bucket (lenstune-studies) and
# MLflow's own user MLFLOW_S3_ACCESS_KEY, whose only policy (minio-mlflow-policy.json) allows
# listing the bucket mlflow and reading, writing and deleting its objects. The MLflow server uses
# that user's keys, never MinIO's root credentials.
set -eu

POLICY=mlflow-artifacts
: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}" "${MLFLOW_S3_ACCESS_KEY:?}" "${MLFLOW_S3_SECRET_KEY:?}"
if [ "$MLFLOW_S3_ACCESS_KEY" = "$MINIO_ROOT_USER" ]; then
    echo "MLFLOW_S3_ACCESS_KEY must name a user of its own, not MinIO's root user" >&2
    exit 1
fi

mc alias set store http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD"
mc mb --ignore-existing store/mlflow
mc mb --ignore-existing store/lenstune-studies
mc admin policy create store "$POLICY" /init/minio-mlflow-policy.json
# Creates the user, or sets the secret key of an existing one.
mc admin user add store "$MLFLOW_S3_ACCESS_KEY" "$MLFLOW_S3_SECRET_KEY"
if ! out=$(mc admin policy attach store "$POLICY" --user "$MLFLOW_S3_ACCESS_KEY" 2>&1); then
    case "$out" in
        *"already in effect"*|*"no net effect"*) ;;  # attached by an earlier run
        *) echo "$out" >&2; exit 1 ;;
    esac
fi
echo "MinIO ready: buckets mlflow, lenstune-studies; user $MLFLOW_S3_ACCESS_KEY with policy $POLICY"
