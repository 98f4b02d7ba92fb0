"""Cluster configs: Ray's own schema, KubeRay manifests, image tags and versions, no secrets, and
the security defaults of the clusters and of the tracking stack."""

from __future__ import annotations

import configparser
import ipaddress
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


# ------------------------------------------------------------------------------ security defaults
# The job API (dashboard, port 8265) runs any code it is sent: every cluster config keeps it off
# public addresses and turns on Ray's token authentication. The tracking stack publishes MLflow's
# plain HTTP on loopback only, gives MLflow a MinIO user of its own and grants nothing by default.

DOCKER = REPO / "docker"


def _aws() -> dict:
    return yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())


def _ray_start(commands: list[str]) -> str:
    found = [c for c in commands if "ray start" in c]
    assert len(found) == 1, commands
    return found[0]


def _not_public(host: str) -> bool:
    """A listen address that is loopback or private (not a wildcard, not a public address)."""
    address = ipaddress.ip_address(host)
    return not address.is_unspecified and (address.is_loopback or address.is_private)


def test_not_public_tells_addresses_apart():
    assert _not_public("127.0.0.1") and _not_public("10.0.3.7")
    assert not _not_public("0.0.0.0") and not _not_public("54.12.3.4")


@pytest.mark.parametrize("kind", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_aws_nodes_start_ray_with_token_authentication(kind):
    config = _aws()
    start = _ray_start(config[kind])
    # Exported in the same shell, before `ray start`: every Ray process and job driver inherits it.
    assert re.search(r"export RAY_AUTH_MODE=token\s*;.*ray start", start, re.S), start
    # The token comes from SSM at setup (setup_commands run on every node, before Ray starts).
    setup = " ".join(config["setup_commands"])
    assert "cluster/fetch_secrets.py ray-token" in setup
    assert "export RAY_AUTH_MODE=token" in setup  # shells opened by `ray exec` / `ray attach`
    text = (CLUSTER / "aws-gpu.yaml").read_text()
    assert "RAY_AUTH_MODE=disabled" not in text
    assert "RAY_AUTH_TOKEN=" not in " ".join(config["docker"]["run_options"])


def test_aws_dashboard_is_on_loopback_and_no_public_ingress():
    config = _aws()
    head = _ray_start(config["head_start_ray_commands"])
    hosts = re.findall(r"--dashboard-host[= ](\S+)", head)
    assert hosts and all(_not_public(h) for h in hosts), hosts
    assert "0.0.0.0" not in " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    # Ray's default security group admits SSH and intra-cluster traffic only; any extra rule
    # must not open a Ray port (dashboard, GCS, client) to the internet.
    rules = config["provider"].get("security_group", {}).get("IpPermissions", [])
    for node_type in config["available_node_types"].values():
        assert "SecurityGroupIds" not in node_type["node_config"] or rules == []
    for rule in rules:
        ranges = [r.get("CidrIp") for r in rule.get("IpRanges", [])] + [
            r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])]
        if any(c in ("0.0.0.0/0", "::/0") for c in ranges):
            low, high = rule.get("FromPort", -1), rule.get("ToPort", -1)
            for port in (8265, 6379, 10001):
                assert not (low == -1 or low <= port <= high), rule


def test_kuberay_cluster_uses_token_authentication_from_a_secret():
    cluster = _kuberay("RayCluster")
    auth = cluster["spec"].get("authOptions") or {}
    assert auth.get("mode") == "token", auth
    # A Secret the operator does not generate, so users know where the token is (docs/cluster.md).
    assert auth.get("secretName"), auth
    # Token auth needs Ray >= 2.52 (KubeRay refuses authOptions below that).
    assert tuple(int(x) for x in cluster["spec"]["rayVersion"].split(".")[:2]) >= (2, 52)
    # Nothing in the pods overrides what the operator sets on every Ray container.
    spec = cluster["spec"]
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for pod in pods:
        for container in pod["spec"]["containers"]:
            names = {e["name"] for e in container.get("env", [])}
            assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}, names


def test_kuberay_dashboard_is_not_exposed():
    head = _kuberay("RayCluster")["spec"]["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert (head.get("headService") or {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
    assert head.get("enableIngress") is not True
    host = head["rayStartParams"].get("dashboard-host", "0.0.0.0")  # KubeRay's default
    spec = _kuberay("RayCluster")["spec"]
    pods = [head["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    if not _not_public(host):
        # The wildcard of the pod's own network namespace (loopback + pod IP), which the operator,
        # RayJob submitters and port-forward all need; only without hostNetwork is it not public.
        assert host == "0.0.0.0"
        assert not any(p["spec"].get("hostNetwork") for p in pods)


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _variables(value: str) -> set[str]:
    """Names of the ${VAR...} references in a compose value."""
    return set(re.findall(r"\$\{(\w+)", str(value)))


def test_compose_publishes_plain_http_on_loopback_only():
    services = _compose()["services"]
    mlflow_ports = services["mlflow"]["ports"]
    assert mlflow_ports and all(str(p).startswith("127.0.0.1:") for p in mlflow_ports), mlflow_ports
    for name, service in services.items():
        for port in service.get("ports", []):
            if name == "tls-proxy":
                continue
            assert str(port).startswith("127.0.0.1:"), (name, port)
    # The one service published on all interfaces is the TLS front, in its own profile, which
    # terminates TLS and forwards to the MLflow server.
    front = services["tls-proxy"]
    assert front["profiles"] == ["tls"]
    assert [str(p).rsplit(":", 1)[1] for p in front["ports"]] == ["443"]
    caddyfile = (DOCKER / "Caddyfile").read_text()
    assert re.search(r"^\s*tls /certs/\S+ /certs/\S+$", caddyfile, re.M), caddyfile
    assert re.search(r"^\s*reverse_proxy mlflow:5000$", caddyfile, re.M), caddyfile
    # The server accepts the public name's Host and Origin (requests through the front).
    command = " ".join(services["mlflow"]["command"])
    hosts = re.search(r'--allowed-hosts "([^"]+)"', command).group(1)
    origins = re.search(r'--cors-allowed-origins "([^"]+)"', command).group(1)
    assert "${MLFLOW_PUBLIC_HOST" in hosts and "https://${MLFLOW_PUBLIC_HOST" in origins


def test_compose_mlflow_uses_a_scoped_minio_user():
    services = _compose()["services"]
    mlflow_env = services["mlflow"]["environment"]
    root = _variables(services["minio"]["environment"]["MINIO_ROOT_USER"]) | _variables(
        services["minio"]["environment"]["MINIO_ROOT_PASSWORD"])
    access = _variables(mlflow_env["AWS_ACCESS_KEY_ID"])
    secret = _variables(mlflow_env["AWS_SECRET_ACCESS_KEY"])
    assert access and secret and not (access | secret) & root, (access, secret, root)
    # No other service than MinIO and its setup job holds the root credentials.
    for name, service in services.items():
        if name not in ("minio", "minio-bucket"):
            env = " ".join(str(v) for v in (service.get("environment") or {}).values())
            assert not _variables(env) & root, name
    # The setup job creates that user with the same variables and a policy file it mounts.
    setup = services["minio-bucket"]
    assert _variables(setup["environment"]["MLFLOW_S3_ACCESS_KEY"]) == access
    assert _variables(setup["environment"]["MLFLOW_S3_SECRET_KEY"]) == secret
    mounts = {m.split(":")[0]: m.split(":")[1] for m in setup["volumes"]}
    script = (DOCKER / mounts["./minio-init.sh"].rsplit("/", 1)[1]).read_text()
    assert mounts["./minio-init.sh"] in " ".join(setup["entrypoint"])
    policy_path = mounts["./minio-mlflow-policy.json"]
    assert re.search(rf'mc admin policy create store "\$POLICY" {re.escape(policy_path)}', script)
    assert 'mc admin user add store "$MLFLOW_S3_ACCESS_KEY" "$MLFLOW_S3_SECRET_KEY"' in script
    assert re.search(r'mc admin policy attach store "\$POLICY" --user "\$MLFLOW_S3_ACCESS_KEY"', script)
    # The policy covers the artifact bucket the server writes to, and nothing else.
    command = " ".join(services["mlflow"]["command"])
    bucket = re.search(r"--artifacts-destination s3://([\w.-]+)/", command).group(1)
    policy = json.loads((DOCKER / "minio-mlflow-policy.json").read_text())
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        assert all(a.startswith("s3:") and "*" not in a for a in statement["Action"]), statement
        assert set(statement["Resource"]) <= {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}, statement


def test_mlflow_auth_grants_nothing_by_default():
    config = configparser.ConfigParser()
    config.read(DOCKER / "mlflow-auth.ini")
    assert config["mlflow"]["default_permission"] == "NO_PERMISSIONS"
    assert config["mlflow"].getboolean("grant_default_workspace_access") is False
    # The image the compose stack runs reads exactly this file.
    dockerfile = (DOCKER / "mlflow.Dockerfile").read_text()
    assert "COPY mlflow-auth.ini /mlflow/mlflow-auth.ini" in dockerfile
    assert "MLFLOW_AUTH_CONFIG_PATH=/mlflow/mlflow-auth.ini" in dockerfile
