"""Writes to MLflow that outlive a tracking server's outage.

Whoever writes while training (a trial: its epoch metrics, best-epoch artifacts, its end; the
study driver: opening and ending trial runs) hands each write to an :class:`Outbox`, which
appends it to a journal on local disk (one JSON line per write, under the study's
``<runs-dir>/outbox/<study>/``) and returns at once. A background thread sends the journal to
MLflow in order. While the server is away (connection refused, time-outs, HTTP 5xx) the writes
stay in the journal and the thread retries every few seconds; when the server is back it
sends them, oldest first, and nothing is lost. A write the server refuses for good (HTTP 4xx,
a run that does not exist) is dropped and raised at the next :meth:`Outbox.flush`.

A journal that a process left behind (killed, or ended before the server came back) is sent by
:func:`replay_outbox`: ``--resume`` of the study does that before anything else, and the end of
every study does it for what its trials left on this machine. Each journal is locked
(``flock``) by its writer while it lives, so two processes never send the same journal.

:class:`ServerWatch` tells the driver how long the server has been unreachable; the study stops
cleanly once that passes its limit (``tracking_outage_limit_s``).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

JOURNAL_SUFFIX = ".jsonl"
SENT_SUFFIX = ".sent"  # beside each journal: how many of its lines were sent
BLOBS = "blobs"  # artifact folders waiting to be sent, one sub-folder per write


class OutboxError(RuntimeError):
    """A write MLflow refused for good (not an outage), raised at flush."""


class TrackingOutageError(RuntimeError):
    """The tracking server stayed unreachable past the study's limit: the study stopped."""


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means the tracking server is away for now (worth retrying): connection
    and time-out errors, HTTP 5xx and MLflow's own errors of that kind. A refusal (HTTP 4xx:
    no such run, a bad value) and a local disk error are not."""
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(exc, RestException):
        return exc.get_http_status_code() >= 500
    if isinstance(exc, MlflowException):
        text = str(exc)
        if any(word in text for word in ("disk is full", "readonly database", "read-only")):
            return False
        return exc.get_http_status_code() >= 500
    if isinstance(exc, OSError):
        return exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES,
                                 errno.EPERM, errno.EFBIG)
    return type(exc).__module__.split(".")[0] in ("requests", "urllib3", "http")


def _lock(handle) -> bool:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


class _Journal:
    """One writer's operations on disk: ``<name>.jsonl`` (append-only) and ``<name>.sent``
    (how many lines were sent), locked while open."""

    def __init__(self, path: Path, handle):
        self.path, self._handle = path, handle
        self.sent_path = path.with_suffix(SENT_SUFFIX)

    @classmethod
    def create(cls, folder: Path, name: str) -> "_Journal":
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}{JOURNAL_SUFFIX}"
        handle = path.open("a+", encoding="utf-8")
        _lock(handle)
        return cls(path, handle)

    @classmethod
    def adopt(cls, path: Path) -> "_Journal | None":
        """The journal at ``path`` when no live writer holds it, else None."""
        try:
            handle = path.open("a+", encoding="utf-8")
        except FileNotFoundError:
            return None
        if not _lock(handle):
            handle.close()
            return None
        return cls(path, handle)

    @property
    def closed(self) -> bool:
        return self._handle.closed

    def append(self, op: dict[str, Any]) -> None:
        if self._handle.closed:
            raise OutboxError(f"journal {self.path} is closed: nothing more can be written")
        self._handle.write(json.dumps(op, separators=(",", ":")) + "\n")
        self._handle.flush()

    def read(self) -> tuple[list[dict[str, Any]], int]:
        """(every operation, how many were sent)."""
        self._handle.seek(0)
        ops = []
        for line in self._handle:
            try:
                ops.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a kill: nothing after it was written
                break
        try:
            sent = int(self.sent_path.read_text() or 0)
        except (FileNotFoundError, ValueError):
            sent = 0
        return ops, sent

    def mark_sent(self, count: int) -> None:
        tmp = self.sent_path.with_suffix(".tmp")
        tmp.write_text(str(count))
        os.replace(tmp, self.sent_path)

    def close(self, delete: bool) -> None:
        if delete:
            for path in (self.path, self.sent_path):
                path.unlink(missing_ok=True)
        self._handle.close()


def apply(client, folder: Path, op: dict[str, Any]) -> None:
    """Send one journal operation to MLflow (see :class:`Outbox` for the kinds)."""
    from tuner.tracking import writer

    kind, run_id = op["op"], op.get("run_id")
    if kind == "metrics":
        metrics = [writer.Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in op["metrics"]]
        for start in range(0, len(metrics), 1000):  # MLflow's limit per log_batch
            client.log_batch(run_id, metrics=metrics[start:start + 1000])
    elif kind == "tags":
        client.log_batch(run_id, tags=[writer.RunTag(k, str(v)) for k, v in op["tags"].items()])
    elif kind == "artifacts":
        blob = folder / BLOBS / op["blob"]
        if blob.is_dir():  # absent: sent before a kill that came before its mark
            client.log_artifacts(run_id, str(blob), op.get("path"))
            shutil.rmtree(blob, ignore_errors=True)
    elif kind == "end_run":
        writer.end_trial_run(client, run_id, op["stop_reason"], op.get("message", ""))
    elif kind == "open_trial":
        writer.open_trial_run(client, **op["fields"])
    elif kind == "end_trial":
        writer.settle_trial_end(client, **op["fields"])
    elif kind == "trial_tags":
        writer.tag_trial(client, **op["fields"])
    else:
        raise OutboxError(f"unknown journal operation {kind!r}")


def _send(client, folder: Path, ops: list[dict[str, Any]], start: int,
          on_sent: Callable[[int], None], refused: list[BaseException]) -> int:
    """Send ``ops[start:]`` in order; returns how many are sent now (stops at an outage).
    A refused operation is recorded in ``refused`` and counts as sent."""
    done = start
    while done < len(ops):
        try:
            apply(client, folder, ops[done])
        except Exception as exc:
            if is_outage(exc):
                raise
            log.warning("MLflow refused a %s write: %s", ops[done].get("op"), exc)
            refused.append(exc)
        done += 1
        on_sent(done)
    return done


def replay_outbox(client, folder: Path) -> tuple[int, int]:
    """Send every journal under ``folder`` that no live writer holds (left by a killed or
    stopped process), oldest first, deleting each once sent. Returns (operations sent,
    operations still waiting because the server is away)."""
    if not folder.is_dir():
        return 0, 0
    sent_total = left = 0
    journals = sorted(folder.glob("*" + JOURNAL_SUFFIX), key=lambda p: p.stat().st_mtime)
    for path in journals:
        journal = _Journal.adopt(path)
        if journal is None:
            continue
        ops, sent = journal.read()
        try:
            done = _send(client, folder, ops, sent, journal.mark_sent, [])
        except Exception as exc:  # the server is away (is_outage): keep the rest
            log.warning("tracking server away while replaying %s: %s", path.name, exc)
            ops, done = journal.read()
            left += len(ops) - done
            journal.close(delete=False)
            continue
        sent_total += done - sent
        journal.close(delete=True)
    return sent_total, left


class Outbox:
    """Journalled, ordered, non-blocking writes to MLflow from one process.

    ``adopt``: before its own writes, send the journals that ended writers left in ``folder``
    (a trial on a cluster node sends what an earlier trial there could not).

    Operations (each a JSON line): ``metrics`` (a run's values at a step), ``tags``,
    ``artifacts`` (a folder copied into the outbox at once, so the caller may delete its own),
    ``end_run`` (stop reason and status), and the driver's ``open_trial``, ``end_trial`` and
    ``trial_tags`` (:func:`tuner.tracking.writer.open_trial_run`,
    :func:`tuner.tracking.writer.settle_trial_end`, :func:`tuner.tracking.writer.tag_trial`).
    """

    def __init__(self, client, folder: Path | str, name: str, *, retry_s: float = 5.0,
                 slow_s: float = 10.0, adopt: bool = False):
        self._client, self.folder = client, Path(folder)
        self._adopt = adopt  # first send what other, ended writers left in the folder
        self._retry_s, self._slow_s = retry_s, slow_s
        self._journal = _Journal.create(self.folder, name)
        self._ops: list[dict[str, Any]] = []
        self._sent = 0
        self._refused: list[BaseException] = []
        self._away_since: float | None = None  # first failed attempt of the current outage
        self._sending_since: float | None = None
        self._stop = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=f"outbox-{name}", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- what callers write
    def submit(self, op: dict[str, Any]) -> None:
        """Journal ``op`` and have it sent in order."""
        with self._changed:
            self._journal.append(op)
            self._ops.append(op)
            self._changed.notify_all()

    def metrics(self, run_id: str, values: dict[str, float], step: int) -> None:
        """One step's ``values`` of ``run_id``, timestamped now."""
        now = int(time.time() * 1000)
        self.submit({"op": "metrics", "run_id": run_id,
                     "metrics": [[k, float(v), now, int(step)] for k, v in values.items()]})

    def tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.submit({"op": "tags", "run_id": run_id, "tags": {k: str(v) for k, v in tags.items()}})

    def artifacts(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
        """The files under ``local_dir`` (copied now) into ``run_id``'s artifacts."""
        blob = uuid.uuid4().hex
        shutil.copytree(local_dir, self.folder / BLOBS / blob)
        self.submit({"op": "artifacts", "run_id": run_id, "blob": blob, "path": artifact_path})

    def end_run(self, run_id: str, stop_reason: str, message: str = "") -> None:
        self.submit({"op": "end_run", "run_id": run_id, "stop_reason": stop_reason,
                     "message": message})

    # ------------------------------------------------------------------------- state
    @property
    def away(self) -> bool:
        """Whether the server is not answering: the last attempt failed, or the one under
        way has taken longer than ``slow_s``."""
        sending = self._sending_since
        return self._away_since is not None or (
            sending is not None and time.monotonic() - sending > self._slow_s)

    @property
    def pending(self) -> int:
        return len(self._ops) - self._sent

    def flush(self, wait_s: float | None = None) -> bool:
        """Wait until everything written so far was sent, or the server is away (then the
        writes wait in the journal), or ``wait_s`` passed. Returns whether all was sent;
        raises :class:`OutboxError` for writes MLflow refused since the last flush."""
        deadline = None if wait_s is None else time.monotonic() + wait_s
        with self._changed:
            while self._sent < len(self._ops) and not self.away:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._changed.wait(timeout=0.5 if left is None else min(left, 0.5))
            done = self._sent == len(self._ops)
            refused, self._refused = self._refused, []
        if refused:
            raise OutboxError(f"MLflow refused {len(refused)} write(s): {refused[0]}")
        return done

    def close(self, wait_s: float = 30.0, raise_errors: bool = True) -> bool:
        """Send what is waiting (for up to ``wait_s`` seconds while the server is away) and
        stop. What could not be sent stays in the journal for :func:`replay_outbox`. Returns
        whether everything was sent. Idempotent."""
        if self._thread.is_alive():
            deadline = time.monotonic() + wait_s
            with self._changed:
                while self._sent < len(self._ops) and time.monotonic() < deadline:
                    if self._refused and raise_errors:
                        break
                    self._changed.wait(timeout=min(0.5, max(deadline - time.monotonic(), 0.01)))
                self._stop = True
                self._changed.notify_all()
            self._thread.join(timeout=max(deadline - time.monotonic(), 0) + 1.0)
        with self._changed:
            done = self._sent == len(self._ops)
            if not self._journal.closed:
                self._journal.close(delete=done)
            refused, self._refused = self._refused, []
        if refused and raise_errors:
            raise OutboxError(f"MLflow refused {len(refused)} write(s): {refused[0]}")
        return done

    # -------------------------------------------------------------------- the sender
    def _mark(self, count: int) -> None:
        with self._changed:
            self._sent = count
            if not self._journal.closed:
                self._journal.mark_sent(count)
            self._changed.notify_all()

    def _loop(self) -> None:
        if self._adopt:
            try:
                replay_outbox(self._client, self.folder)
            except Exception as exc:  # never a reason to lose this writer's own writes
                log.warning("could not send the journals left in %s: %s", self.folder, exc)
        while True:
            with self._changed:
                while not self._stop and self._sent == len(self._ops):
                    self._changed.wait()
                if self._stop:
                    return
                ops, start = list(self._ops), self._sent
            self._sending_since = time.monotonic()
            try:
                _send(self._client, self.folder, ops, start, self._mark, self._refused)
                self._away_since = None
            except Exception as exc:  # the server is away: wait, then try again
                if self._away_since is None:
                    log.warning("MLflow unreachable (%s); %d write(s) wait in %s", exc,
                                len(ops) - self._sent, self._journal.path)
                    self._away_since = time.monotonic()
                with self._changed:
                    self._changed.notify_all()
                    self._changed.wait(timeout=self._retry_s)
            finally:
                self._sending_since = None


class ServerWatch:
    """How long the tracking server at ``uri`` has been unreachable, from a probe every
    ``interval_s`` seconds in a daemon thread (:func:`tuner.tracking.auth.check_tracking_server`).
    A store that is not a server (sqlite, PostgreSQL) is never away."""

    def __init__(self, uri: str, interval_s: float = 5.0):
        self.uri, self.interval_s = uri, interval_s
        self._away_since: float | None = None
        self._reason = ""
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> "ServerWatch":
        if self.uri.startswith(("http://", "https://")) and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="tracking-watch", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        from tuner.tracking.auth import TrackingServerError, check_tracking_server

        while not self._stop.is_set():
            try:
                check_tracking_server(self.uri, timeout_s=min(self.interval_s, 5.0))
                self._away_since = None
            except TrackingServerError as exc:
                if self._away_since is None:
                    self._away_since = time.monotonic()
                self._reason = str(exc)
            self._stop.wait(self.interval_s)

    def away_for(self) -> float:
        """Seconds since the first failed probe of the current outage; 0 when reachable."""
        since = self._away_since
        return 0.0 if since is None else time.monotonic() - since

    @property
    def reason(self) -> str:
        return self._reason
