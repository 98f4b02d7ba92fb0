"""Fail-fast check that an MLflow tracking server is reachable and accepts our credentials.

A study on a cluster may run for hours before its first trial logs; a wrong URI or a missing
password must stop it at start, with a message that says what to fix. MLflow's ``/health``
endpoint answers without authentication, so this check calls an authenticated API instead.
Credentials are read the way the MLflow client reads them (MLFLOW_TRACKING_USERNAME /
MLFLOW_TRACKING_PASSWORD, else ``~/.mlflow/credentials``) and never appear in a message.
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.parse
import urllib.request

# An authenticated, read-only call every signed-in user may make.
_PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"
_CREDENTIAL_HINT = (
    "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the environment "
    "(or write them to ~/.mlflow/credentials)"
)


class TrackingServerError(RuntimeError):
    """The MLflow tracking server is unreachable or refuses our credentials."""


def redact_uri(uri: str) -> str:
    """``uri`` without any user:password part, safe to print or log."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _credentials() -> tuple[str | None, str | None]:
    from mlflow.utils.credentials import read_mlflow_creds

    creds = read_mlflow_creds()
    return creds.username, creds.password


def check_tracking_server(uri: str, timeout_s: float = 5.0) -> None:
    """Raise TrackingServerError unless the server at ``uri`` answers an authenticated request.

    URIs that are not http(s) (``sqlite:///...``, ``postgresql://...``) name no server and pass.
    ``timeout_s``: seconds to wait for the server's answer.
    """
    if not uri.startswith(("http://", "https://")):
        return
    shown = redact_uri(uri)
    request = urllib.request.Request(uri.rstrip("/") + _PROBE, method="GET")
    username, password = _credentials()
    if username and password:
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):
            return
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingServerError(
            f"MLflow tracking server {shown} is unreachable ({reason}); start it or pass another "
            "--tracking-uri"
        ) from None
    if status == 401:
        if not (username and password):
            raise TrackingServerError(
                f"MLflow tracking server {shown} requires authentication and no credentials are "
                f"set: {_CREDENTIAL_HINT}"
            )
        raise TrackingServerError(
            f"MLflow tracking server {shown} rejected the credentials of user {username!r} "
            "(wrong username or password)"
        )
    if status == 403:
        raise TrackingServerError(
            f"MLflow tracking server {shown} refused user {username!r}: no permission; ask the "
            "server's admin for access"
        )
    raise TrackingServerError(
        f"MLflow tracking server {shown} answered HTTP {status} to {_PROBE.split('?')[0]}; "
        "is this an MLflow server (check the --tracking-uri host and port)?"
    )
