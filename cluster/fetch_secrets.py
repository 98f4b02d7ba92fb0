"""Write a cloud cluster node's secrets from AWS SSM Parameter Store into owner-only files.

Run by the cluster launcher at node setup (cluster/aws-gpu.yaml, setup_commands and
head_setup_commands), before Ray starts. Every secret lives in SSM Parameter Store as a
SecureString, read with the node's instance role, so none is ever written into a config file or
an image. One subcommand per secret, each into the file its client reads by itself:

- ``mlflow-credentials``: ``<prefix>/username`` and ``<prefix>/password`` into
  ``~/.mlflow/credentials``, which MLflow's client reads when MLFLOW_TRACKING_USERNAME/PASSWORD
  are not set. The prefix defaults to $LENSTUNE_MLFLOW_CREDENTIALS_SSM_PREFIX; with none, nothing
  is written (a tracking server without auth needs no credentials).
- ``ray-token``: the cluster's authentication token into ``~/.ray/auth_token``, which
  ``ray start`` with RAY_AUTH_MODE=token reads (and refuses to start without).
- ``pgpass``: the password of the database user in $LENSTUNE_OPTUNA_STORAGE (a URL without a
  password, such as ``postgresql+psycopg2://optuna@db.internal:5432/optuna``) into
  ``~/.pgpass``, which libpq (psycopg2) reads for a connection that names no password. With no
  PostgreSQL URL, nothing is written (the searchers' studies then stay in sqlite).

Every file is written atomically (a temporary file, then a rename) with mode 600.
Environment: AWS_DEFAULT_REGION, and the variables above.
"""

from __future__ import annotations

import argparse
import configparser
import io
import os
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

MLFLOW_PREFIX_ENV = "LENSTUNE_MLFLOW_CREDENTIALS_SSM_PREFIX"
OPTUNA_STORAGE_ENV = "LENSTUNE_OPTUNA_STORAGE"  # as tuner/study/config.py names it
DEFAULT_RAY_TOKEN_PARAMETER = "/lenstune/ray/auth_token"
DEFAULT_OPTUNA_PASSWORD_PARAMETER = "/lenstune/optuna/password"


def read_parameter(name: str, ssm_client) -> str:
    """The decrypted value of the SSM parameter ``name``, stripped; SystemExit naming it when it
    does not exist or is empty."""
    try:
        reply = ssm_client.get_parameter(Name=name, WithDecryption=True)
    except ssm_client.exceptions.ParameterNotFound:
        raise SystemExit(f"SSM parameter {name!r} not found; create it (SecureString) first") from None
    value = reply["Parameter"]["Value"].strip()
    if not value:
        raise SystemExit(f"SSM parameter {name!r} is empty")
    return value


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only, atomically: a reader sees the old
    file or the new one, never a half-written one or one with looser permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def mlflow_credentials_text(username: str, password: str) -> str:
    """MLflow's credentials file (section ``mlflow``, the keys its client reads)."""
    config = configparser.ConfigParser()
    config["mlflow"] = {"mlflow_tracking_username": username, "mlflow_tracking_password": password}
    out = io.StringIO()
    config.write(out)
    return out.getvalue()


def pgpass_fields(url: str) -> tuple[str, str, str, str] | None:
    """(host, port, database, user) of a PostgreSQL URL that names no password; None for any
    other storage (sqlite, unset) or a URL that carries its password itself. SystemExit when a
    PostgreSQL URL names no user or host (libpq could not match a .pgpass line to it)."""
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme.split("+")[0] not in ("postgresql", "postgres") or parts.password is not None:
        return None
    if not parts.username or not parts.hostname:
        raise SystemExit(f"{OPTUNA_STORAGE_ENV}={url!r} names no user or host; allowed: "
                         "postgresql+psycopg2://USER@HOST[:PORT]/DATABASE")
    return (parts.hostname, str(parts.port or 5432), parts.path.lstrip("/") or unquote(parts.username),
            unquote(parts.username))


def _pgpass_escape(field: str) -> str:
    return field.replace("\\", "\\\\").replace(":", "\\:")


def pgpass_text(existing: str, fields: tuple[str, str, str, str], password: str) -> str:
    """``existing`` .pgpass content with the line for ``fields`` (host, port, database, user)
    replaced, or added; other lines are kept as they are."""
    key = ":".join(_pgpass_escape(f) for f in fields)
    lines = [line for line in existing.splitlines()
             if line.strip() and not line.startswith(key + ":")]
    lines.append(f"{key}:{_pgpass_escape(password)}")
    return "\n".join(lines) + "\n"


def _ssm():
    import boto3  # imported here so --help works without AWS libraries

    return boto3.client("ssm")


def fetch_mlflow_credentials(args) -> int:
    if not args.prefix:
        print(f"no SSM prefix: pass --prefix or set {MLFLOW_PREFIX_ENV}; nothing written", file=sys.stderr)
        return 0
    prefix, ssm = args.prefix.rstrip("/"), _ssm()
    username = read_parameter(f"{prefix}/username", ssm)
    password = read_parameter(f"{prefix}/password", ssm)
    write_private(args.output, mlflow_credentials_text(username, password))
    print(f"MLflow credentials for user {username!r} written to {args.output}")
    return 0


def fetch_ray_token(args) -> int:
    write_private(args.output, read_parameter(args.parameter, _ssm()))
    print(f"Ray authentication token from {args.parameter} written to {args.output}")
    return 0


def fetch_pgpass(args) -> int:
    fields = pgpass_fields(args.url or "")
    if fields is None:
        print(f"{OPTUNA_STORAGE_ENV} is not a PostgreSQL URL without a password; nothing written",
              file=sys.stderr)
        return 0
    password = read_parameter(args.parameter, _ssm())
    existing = args.output.read_text() if args.output.exists() else ""
    write_private(args.output, pgpass_text(existing, fields, password))
    host, port, database, user = fields
    print(f"password of {user}@{host}:{port}/{database} from {args.parameter} written to {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    mlflow = commands.add_parser("mlflow-credentials", help="MLflow basic-auth user and password")
    mlflow.add_argument("--prefix", default=os.environ.get(MLFLOW_PREFIX_ENV),
                        help=f"SSM prefix holding username and password (default: ${MLFLOW_PREFIX_ENV})")
    mlflow.add_argument("--output", type=Path, default=Path.home() / ".mlflow" / "credentials")
    mlflow.set_defaults(run=fetch_mlflow_credentials)
    ray = commands.add_parser("ray-token", help="the Ray cluster's authentication token")
    ray.add_argument("--parameter", default=DEFAULT_RAY_TOKEN_PARAMETER,
                     help=f"SSM parameter holding the token (default: {DEFAULT_RAY_TOKEN_PARAMETER})")
    ray.add_argument("--output", type=Path, default=Path.home() / ".ray" / "auth_token")
    ray.set_defaults(run=fetch_ray_token)
    pgpass = commands.add_parser("pgpass", help="the Optuna storage database's password")
    pgpass.add_argument("--parameter", default=DEFAULT_OPTUNA_PASSWORD_PARAMETER,
                        help=f"SSM parameter holding it (default: {DEFAULT_OPTUNA_PASSWORD_PARAMETER})")
    pgpass.add_argument("--url", default=os.environ.get(OPTUNA_STORAGE_ENV),
                        help=f"the storage URL, without password (default: ${OPTUNA_STORAGE_ENV})")
    pgpass.add_argument("--output", type=Path, default=Path.home() / ".pgpass")
    pgpass.set_defaults(run=fetch_pgpass)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
