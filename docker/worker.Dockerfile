# Ray GPU worker (and head) image with lenstune installed. Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t ghcr.io/lenstune/lenstune-worker:0.1.0 .
# Versions below must match pyproject.toml (tests/cluster/test_docker.py checks).
FROM rayproject/ray:2.60.0-py311-gpu

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# torch wheels carry their own CUDA runtime; the node only needs the NVIDIA driver.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130
ENV RAY_USAGE_STATS_ENABLED=0 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

# The base image runs as user ray (uid 1000, group users = 100); create the source directory as
# that user so the editable install can write its metadata there.
RUN mkdir -p /home/ray/lenstune
WORKDIR /home/ray/lenstune

# Dependencies first, so editing the code does not reinstall them.
COPY --chown=ray:users requirements/constraints.txt requirements/constraints.txt
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" \
        torch==2.14.1 torchvision==0.29.1

COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users tuner/ tuner/
COPY --chown=ray:users search_spaces/ search_spaces/
# Run by the cluster launcher at node setup (cluster/aws-gpu.yaml, setup_commands).
COPY --chown=ray:users cluster/fetch_secrets.py cluster/
# Editable install: `python tuner/run.py` from this directory (the working directory of Ray jobs
# on the cluster) and the installed package are the same files, search spaces included.
RUN pip install --no-cache-dir -c requirements/constraints.txt -e . \
    && python -c "import tuner, ray, torch, mlflow; print(ray.__version__, torch.__version__, mlflow.__version__)"

USER 1000:100
