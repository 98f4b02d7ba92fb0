"""Write the Ray cluster's authentication token of a cloud cluster node into ~/.ray/auth_token.

Run by the cluster launcher on every node (cluster/aws-gpu.yaml, setup_commands) before Ray
starts. The token lives in AWS SSM Parameter Store (SecureString), read with the node's instance
role, so it is never written into a config file or an image. ``ray start`` with RAY_AUTH_MODE=token
reads ``~/.ray/auth_token`` (Ray's default token path) and refuses to start without it; every
process Ray starts, job drivers included, authenticates with it.

Environment: AWS_DEFAULT_REGION.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_PARAMETER = "/lenstune/ray/auth_token"


def read_token(name: str, ssm_client) -> str:
    """Return the token stored in the SSM parameter ``name``."""
    try:
        reply = ssm_client.get_parameter(Name=name, WithDecryption=True)
    except ssm_client.exceptions.ParameterNotFound:
        raise SystemExit(f"SSM parameter {name!r} not found; create it (SecureString) first") from None
    token = reply["Parameter"]["Value"].strip()
    if not token:
        raise SystemExit(f"SSM parameter {name!r} is empty")
    return token


def write_token(path: Path, token: str) -> None:
    """Write the token file, readable by the owner only, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parameter", default=DEFAULT_PARAMETER,
                        help=f"SSM parameter holding the token (default: {DEFAULT_PARAMETER})")
    parser.add_argument("--output", type=Path, default=Path.home() / ".ray" / "auth_token")
    args = parser.parse_args(argv)
    import boto3  # imported here so --help works without AWS libraries

    write_token(args.output, read_token(args.parameter, boto3.client("ssm")))
    print(f"Ray authentication token from {args.parameter} written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
