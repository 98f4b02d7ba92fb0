"""Write the MLflow basic-auth credentials of a cloud cluster node into ~/.mlflow/credentials.

Run by the cluster launcher on every node (cluster/aws-gpu.yaml, setup_commands). The username
and password live in AWS SSM Parameter Store (SecureString) under a prefix, read with the node's
instance role, so no secret is ever written into a config file or an image. MLflow clients read
``~/.mlflow/credentials`` when MLFLOW_TRACKING_USERNAME/PASSWORD are not set.

Environment: LENSTUNE_MLFLOW_CREDENTIALS_SSM_PREFIX (e.g. ``/lenstune/mlflow``, holding
``<prefix>/username`` and ``<prefix>/password``); AWS_DEFAULT_REGION.
"""

from __future__ import annotations

import argparse
import configparser
import os
import sys
from pathlib import Path

PREFIX_ENV = "LENSTUNE_MLFLOW_CREDENTIALS_SSM_PREFIX"


def read_credentials(prefix: str, ssm_client) -> tuple[str, str]:
    """Return (username, password) stored under ``prefix`` in SSM Parameter Store."""
    prefix = prefix.rstrip("/")
    values = []
    for key in ("username", "password"):
        name = f"{prefix}/{key}"
        try:
            reply = ssm_client.get_parameter(Name=name, WithDecryption=True)
        except ssm_client.exceptions.ParameterNotFound:
            raise SystemExit(f"SSM parameter {name!r} not found; create it (SecureString) first") from None
        values.append(reply["Parameter"]["Value"])
    return values[0], values[1]


def write_credentials(path: Path, username: str, password: str) -> None:
    """Write MLflow's credentials file, readable by the owner only, atomically."""
    config = configparser.ConfigParser()
    config["mlflow"] = {"mlflow_tracking_username": username, "mlflow_tracking_password": password}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        config.write(f)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", default=os.environ.get(PREFIX_ENV), help=f"SSM prefix (default: ${PREFIX_ENV})")
    parser.add_argument("--output", type=Path, default=Path.home() / ".mlflow" / "credentials")
    args = parser.parse_args(argv)
    if not args.prefix:
        print(f"no SSM prefix: pass --prefix or set {PREFIX_ENV}; nothing written", file=sys.stderr)
        return 0  # a cluster whose MLflow server has no auth needs no credentials
    import boto3  # imported here so --help works without AWS libraries

    username, password = read_credentials(args.prefix, boto3.client("ssm"))
    write_credentials(args.output, username, password)
    print(f"MLflow credentials for user {username!r} written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
