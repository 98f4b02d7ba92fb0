"""Cluster configs: Ray's own schema, KubeRay manifests, image tags and versions, no secrets."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
LAUNCHER_CONFIGS = sorted(CLUSTER.glob("*.yaml"))
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))
WORKER_IMAGE = "ghcr.io/lenstune/lenstune-worker"


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _pinned(name: str) -> str:
    """Version pinned with == for a dependency in pyproject.toml, e.g. 'ray' -> '2.60.0'."""
    for dep in _project()["dependencies"]:
        match = re.fullmatch(rf"{re.escape(name)}(\[[^\]]*\])?==([\w.]+)", dep)
        if match:
            return match.group(2)
    raise AssertionError(f"{name} is not pinned with == in pyproject.toml")


@pytest.fixture(scope="module")
def ray_schema() -> dict:
    path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    return json.loads(path.read_text())


def test_launcher_configs_exist():
    names = {p.name for p in LAUNCHER_CONFIGS}
    assert {"aws-gpu.yaml", "local-fake-gpu.yaml"} <= names


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_matches_ray_schema(path, ray_schema):
    config = yaml.safe_load(path.read_text())
    jsonschema.validate(config, ray_schema)
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    gpu_types = {n: t for n, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert gpu_types, f"{path.name}: no GPU worker node type"
    # Studies start from zero GPU nodes; the autoscaler adds them and takes them away.
    assert all(t.get("min_workers", 0) == 0 for t in gpu_types.values())
    assert config["idle_timeout_minutes"] > 0


def test_launcher_schema_rejects_a_broken_config(ray_schema):
    """The schema check can fail: a misspelt key in a node type is refused."""
    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    config["available_node_types"]["gpu_1x"]["max_worker"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, ray_schema)


def test_aws_config_uses_our_image_and_gpu_sizes():
    config = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    assert config["provider"]["type"] == "aws"
    assert config["docker"]["image"] == f"{WORKER_IMAGE}:{_project()['version']}"
    gpus = sorted(t["resources"].get("GPU", 0) for t in config["available_node_types"].values())
    assert gpus[0] == 0 and 1 in gpus and max(gpus) >= 4
    spot = [t for t in config["available_node_types"].values() if "InstanceMarketOptions" in t["node_config"]]
    assert spot, "no spot node type"
    # Credentials come from the instance role: every node type has one.
    for name, node_type in config["available_node_types"].items():
        assert "IamInstanceProfile" in node_type["node_config"], name
    run_options = " ".join(config["docker"]["run_options"])
    assert "MLFLOW_TRACKING_URI=" in run_options


def test_fake_cluster_config_is_fake_multinode():
    config = yaml.safe_load((CLUSTER / "local-fake-gpu.yaml").read_text())
    assert config["provider"]["type"] == "fake_multinode"
    assert config["available_node_types"]["ray.head.default"]["resources"].get("GPU", 0) == 0


def _kuberay(kind: str) -> dict:
    docs = [yaml.safe_load(p.read_text()) for p in KUBERAY]
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} manifest in cluster/kuberay, found {len(found)}"
    return found[0]


def _images(node) -> list[str]:
    """Every `image:` value anywhere in a manifest."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "image"] + [i for v in node.values() for i in _images(v)]
    if isinstance(node, list):
        return [i for v in node for i in _images(v)]
    return []


def test_kuberay_raycluster_autoscales_gpu_workers_from_zero():
    cluster = _kuberay("RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    assert spec["rayVersion"] == _pinned("ray")
    assert spec["enableInTreeAutoscaling"] is True
    groups = spec["workerGroupSpecs"]
    gpu_groups = [
        g for g in groups
        if any("nvidia.com/gpu" in c["resources"]["limits"] for c in g["template"]["spec"]["containers"])
    ]
    assert gpu_groups and all(g["minReplicas"] == 0 and g["maxReplicas"] >= 1 for g in gpu_groups)
    images = set(_images(cluster))
    assert images == {f"{WORKER_IMAGE}:{_project()['version']}"}


def test_kuberay_rayjob_runs_the_study_entrypoint():
    job = _kuberay("RayJob")
    cluster = _kuberay("RayCluster")
    assert job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["entrypoint"] == "python tuner/run.py --family swin"
    # The job targets the RayCluster above, whose containers start in the installed source tree.
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["workingDir"] == "/home/ray/lenstune"
    for image in _images(job):
        assert image == f"{WORKER_IMAGE}:{_project()['version']}"


def test_kuberay_credentials_come_from_a_secret():
    cluster = _kuberay("RayCluster")
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in head["env"]}
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        assert "value" not in env[name] and "secretKeyRef" in env[name]["valueFrom"]
