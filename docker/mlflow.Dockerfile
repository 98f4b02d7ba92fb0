# MLflow tracking server with PostgreSQL, S3 and basic-auth support, for docker/compose.yaml.
#   docker build -f docker/mlflow.Dockerfile -t ghcr.io/lenstune/lenstune-mlflow:0.1.0 docker
# Versions below must match pyproject.toml (tests/cluster/test_docker.py checks).
FROM python:3.11-slim

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

RUN pip install --no-cache-dir \
        "mlflow[auth]==3.17.2" \
        "pyarrow<26" \
        psycopg2-binary==2.9.13 \
        boto3==1.44.8

RUN useradd --create-home --uid 1000 mlflow \
    && mkdir -p /mlflow/auth \
    && chown -R mlflow /mlflow
COPY mlflow-auth.ini /mlflow/mlflow-auth.ini
ENV MLFLOW_AUTH_CONFIG_PATH=/mlflow/mlflow-auth.ini

USER 1000
WORKDIR /mlflow
EXPOSE 5000
ENTRYPOINT ["mlflow", "server"]
