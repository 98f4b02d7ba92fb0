"""Failures that end a whole study rather than one trial: a disk that is full, read-only or
refuses writes (the runs folder, the Tune storage, the embedded MLflow store). Every trial
would fail the same way, so retrying trials only wastes time: the study stops, says which
folder and why in one line, and ``--resume`` goes on once there is room.

(The other study-wide stop, a tracking server that stays away, is
:class:`tuner.tracking.outbox.TrackingOutageError`.)
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

# errno -> what it means for a folder the study writes to
_DISK_ERRORS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "read-only file system", errno.EFBIG: "file too large"}
_DISK_TEXTS = {"No space left on device": errno.ENOSPC, "database or disk is full": errno.ENOSPC,
               "Disk quota exceeded": errno.EDQUOT, "Read-only file system": errno.EROFS,
               "attempt to write a readonly database": errno.EROFS}


class DiskError(RuntimeError):
    """A folder the study writes to is full or read-only: the study stopped. ``cause``: what
    the disk did (see :func:`disk_cause`)."""

    def __init__(self, message: str, cause: str = ""):
        super().__init__(message)
        self.cause = cause or message


def stop_message(cause: str, folders: dict[Path, str]) -> str:
    """The one line a study stopped by a disk prints: the folders of ``folders`` (path -> role)
    that are full or read-only now (all of them when none looks so), the cause, what to do."""
    bad = [f"{what} {path}" for path, what in folders.items() if _full_or_read_only(path)]
    named = ", ".join(bad or [f"{what} {path}" for path, what in folders.items()])
    return (f"cannot write to {named}: {cause}; the study stopped; free space (or pass another "
            "--runs-dir or --storage) and run the same command with --resume")


def _full_or_read_only(folder: Path, min_free_bytes: int = 1 << 20) -> bool:
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return bool(stat.f_flag & os.ST_RDONLY) or stat.f_bavail * stat.f_frsize < min_free_bytes


def disk_cause(exc: BaseException | str) -> str | None:
    """What a full or read-only disk did, from an exception (its chain included) or an error
    text; None when the failure is something else. E.g. ``no space left on the device
    (/runs/studies/x/checkpoint_000001)``."""
    seen = set()
    current = exc
    while isinstance(current, BaseException) and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_ERRORS:
            where = f" ({current.filename})" if current.filename else ""
            return _DISK_ERRORS[current.errno] + where
        current = current.__cause__ or current.__context__ or getattr(current, "cause", None)
    text = str(exc)
    for phrase, code in _DISK_TEXTS.items():
        if phrase in text:
            return _DISK_ERRORS[code]
    return None


def check_writable(folder: Path, what: str) -> str | None:
    """Why ``folder`` cannot take a study's files, or None: a small file is written to it (or,
    while it does not exist yet, to the nearest folder above it that does) and deleted, so
    nothing is left behind either way."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    probe = existing / f".lenstune-write-check-{os.getpid()}"
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(existing))
        probe.write_bytes(b"lenstune")
        probe.unlink()
    except OSError as exc:
        reason = _DISK_ERRORS.get(exc.errno, exc.strerror or str(exc))
        return (f"{what} {folder} is not writable ({reason}); pass another --runs-dir or free "
                "the folder")
    return None
