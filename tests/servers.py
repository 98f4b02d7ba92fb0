"""Real servers on 127.0.0.1 for integration tests: PostgreSQL, an S3 endpoint (moto), MLflow.

Each helper is a context manager that starts one server on a free port, waits until it answers,
yields how to reach it, and on exit stops exactly the processes it started (by pid / process
group). Nothing here touches a server it did not start.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"
# Dummy S3 credentials: moto accepts anything; boto3 insists on having some.
S3_DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _wait_until(ready, what: str, proc: subprocess.Popen, timeout_s: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready\n{tail}")
        if ready():
            return
        time.sleep(0.25)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f} s")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


def _stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = 20) -> None:
    """Stop ``proc`` and its children (its own process group, started with start_new_session)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    # Children (e.g. uvicorn workers) may outlive the leader for a moment.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------- PostgreSQL


def postgres_bin_dir() -> Path | None:
    """Folder of the Debian PostgreSQL server binaries (initdb, postgres), newest version."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass(frozen=True)
class Postgres:
    port: int
    user: str
    database: str
    password: str | None = None  # the superuser's, when the server checks passwords

    def client_env(self) -> dict[str, str]:
        """Environment of a PostgreSQL client tool (psql, createdb) run as the superuser."""
        return {**os.environ, **({"PGPASSWORD": self.password} if self.password else {})}

    @property
    def uri(self) -> str:
        # Trust authentication on loopback only (set at initdb): the URI carries no password.
        return f"postgresql://{self.user}@{LOOPBACK}:{self.port}/{self.database}"

    @property
    def sqlalchemy_uri(self) -> str:
        """The URI for MLflow's --backend-store-uri: SQLAlchemy >= 2.1 defaults ``postgresql://``
        to psycopg 3, so name the installed psycopg2 driver."""
        return self.uri.replace("postgresql://", "postgresql+psycopg2://", 1)


@contextlib.contextmanager
def postgres_server(database: str = "mlflow", timeout_s: float = 60, *,
                    password: str | None = None, ssl: bool = False) -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster in a temp dir on a free loopback port.

    Trust authentication by default; with ``password``, every connection must give a password
    (SCRAM; ``password`` is the superuser's). With ``ssl``, the server also takes TLS, with a
    self-signed certificate (clients' ``sslmode=require`` checks encryption, not the name).

    PostgreSQL refuses to run as root, so as root it runs as the ``postgres`` system user
    (which the Debian package creates).
    """
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries not found; run .ci/system-deps (apt-get install postgresql)")
    run_as: dict = {}
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    root = Path(tempfile.mkdtemp(prefix="lt-pg-", dir="/tmp"))
    data, sockets, log = root / "data", root / "sock", root / "postgres.log"
    sockets.mkdir()
    if run_as:
        for path in (root, sockets):
            os.chown(path, run_as["user"], run_as["group"])
    port = free_port()
    db_user = "lenstune"
    proc = None
    server = Postgres(port=port, user=db_user, database=database, password=password)
    try:
        auth = ["--auth=trust"]
        if password is not None:
            pwfile = root / "superuser-password"
            pwfile.write_text(password + "\n")
            auth = ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        options = ["-c", "fsync=off", "-c", "max_connections=50"]
        if ssl:
            key, cert = root / "server.key", root / "server.crt"
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                            "-subj", f"/CN={LOOPBACK}", "-keyout", key, "-out", cert],
                           check=True, capture_output=True, timeout=60)
            key.chmod(0o600)
            options += ["-c", "ssl=on", "-c", f"ssl_cert_file={cert}", "-c", f"ssl_key_file={key}"]
        if run_as:
            for path in (p for p in root.iterdir() if p.is_file()):
                os.chown(path, run_as["user"], run_as["group"])
        subprocess.run(
            [bin_dir / "initdb", "-D", data, "-U", db_user, *auth, "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, timeout=120, **run_as,
        )
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [bin_dir / "postgres", "-D", data, "-h", LOOPBACK, "-p", str(port), "-k", sockets,
                 *options],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **run_as,
            )

        def accepts() -> bool:
            result = subprocess.run(
                [bin_dir / "pg_isready", "-h", LOOPBACK, "-p", str(port), "-U", db_user],
                capture_output=True, **run_as,
            )
            return result.returncode == 0

        _wait_until(accepts, "postgres", proc, timeout_s, log)
        subprocess.run(
            [bin_dir / "createdb", "-h", LOOPBACK, "-p", str(port), "-U", db_user, database],
            check=True, capture_output=True, timeout=60, env=server.client_env(), **run_as,
        )
        yield server
    finally:
        if proc is not None:
            # SIGINT = PostgreSQL's "fast shutdown": disconnect clients, stop cleanly.
            _stop_group(proc, signal.SIGINT)
        shutil.rmtree(root, ignore_errors=True)


def create_optuna_database(pg: Postgres, repo: Path, password: str = "not-checked-on-trust") -> str:
    """Run ``docker/postgres-init-optuna.sh`` on ``pg`` as the postgres image runs its init
    scripts (psql on PATH, its user and database in the environment), the role ``optuna``
    getting ``password``; the SQLAlchemy URL of the ``optuna`` database it makes, without the
    password (none needed with trust authentication)."""
    env = {**pg.client_env(), "PATH": f"{postgres_bin_dir()}:{os.environ['PATH']}",
           "PGHOST": LOOPBACK, "PGPORT": str(pg.port), "POSTGRES_USER": pg.user,
           "POSTGRES_DB": pg.database, "OPTUNA_DB_PASSWORD": password}
    init = subprocess.run(["sh", str(repo / "docker" / "postgres-init-optuna.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    if init.returncode != 0 or "database optuna, owned by role optuna" not in init.stdout:
        raise RuntimeError(f"postgres-init-optuna.sh failed: {init.stdout}{init.stderr}")
    return f"postgresql+psycopg2://optuna@{LOOPBACK}:{pg.port}/optuna"


# ------------------------------------------------------------------------------ S3 (moto)


@contextlib.contextmanager
def s3_server(timeout_s: float = 60) -> Iterator[str]:
    """An S3-compatible endpoint (``moto_server``) on loopback; yields its URL."""
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    log = Path(tempfile.mkstemp(prefix="lt-moto-", suffix=".log", dir="/tmp")[1])
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [BIN / "moto_server", "-H", LOOPBACK, "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **S3_DUMMY_ENV},
        )
    try:
        _wait_until(lambda: _http_ok(url + "/moto-api/"), "moto_server", proc, timeout_s, log)
        yield url
    finally:
        _stop_group(proc)
        log.unlink(missing_ok=True)


def create_bucket(endpoint_url: str, bucket: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint_url, **_boto_kwargs())
    s3.create_bucket(Bucket=bucket)


def list_objects(endpoint_url: str, bucket: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint_url, **_boto_kwargs())
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return keys


def _boto_kwargs() -> dict:
    return {
        "aws_access_key_id": S3_DUMMY_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_DUMMY_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_DUMMY_ENV["AWS_DEFAULT_REGION"],
    }


# ---------------------------------------------------------------------------------- MLflow


@dataclass(frozen=True)
class MlflowServer:
    uri: str
    log: Path


def write_basic_auth_config(folder: Path, admin_username: str) -> Path:
    """An MLflow basic-auth ini in ``folder`` with its own user database; no password in it
    (the admin password goes through MLFLOW_AUTH_ADMIN_PASSWORD)."""
    path = folder / "basic_auth.ini"
    path.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{folder / 'basic_auth.db'}\n"
        f"admin_username = {admin_username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    return path


@contextlib.contextmanager
def mlflow_server(
    backend_store_uri: str,
    *,
    artifacts_destination: str | None = None,
    env: dict[str, str] | None = None,
    app_name: str | None = None,
    timeout_s: float = 120,
    port: int | None = None,
) -> Iterator[MlflowServer]:
    """``mlflow server`` on a free loopback port, or ``port`` (to start a stopped server again
    where its clients look for it); one worker, no job execution: ~0.5 GiB."""
    port = port or free_port()
    log = Path(tempfile.mkstemp(prefix="lt-mlflow-", suffix=".log", dir="/tmp")[1])
    cmd = [
        BIN / "mlflow", "server", "--backend-store-uri", backend_store_uri,
        "--host", LOOPBACK, "--port", str(port), "--workers", "1",
    ]
    if artifacts_destination:
        cmd += ["--artifacts-destination", artifacts_destination]
    if app_name:
        cmd += ["--app-name", app_name]
    server_env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
    # The server must not inherit a client's credentials or tracking URI.
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        server_env.pop(key, None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, env=server_env,
        )
    uri = f"http://{LOOPBACK}:{port}"
    try:
        _wait_until(lambda: _http_ok(uri + "/health"), "mlflow server", proc, timeout_s, log)
        yield MlflowServer(uri=uri, log=log)
    finally:
        _stop_group(proc)
        log.unlink(missing_ok=True)
