"""Write a folder completely or not at all: build it in a hidden temporary folder beside its
target, then rename it into place. Used for datasets (``tuner.data.store``) and reports
(``lenstune report``).

The temporary folder is named ``.<target>.tmp-<host>-<pid>-*``, so a later write of the same
target on the same host can remove what a killed writer left behind.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_folder(root: str | Path, *, force: bool, replaceable: Callable[[Path], bool],
                  kind: str, force_hint: str = "--force",
                  error: type[Exception] = ValueError) -> Iterator[Path]:
    """Yield a temporary folder beside ``root``; on success move it to ``root``.

    An existing ``root`` is refused (``error``) unless ``force``, and even then unless it is
    empty or ``replaceable(root)`` (``kind`` names what it should be, for the message). With
    ``force`` the old folder is moved aside and the new one renamed in, so readers see one or
    the other, never a mix. On any exception the temporary folder is removed and ``root`` is
    left as it was.
    """
    root = Path(root)

    def check() -> None:
        if not root.exists():
            return
        if not force:
            raise error(f"{root} already exists; pass {force_hint} to replace it")
        if root.is_dir() and (not any(root.iterdir()) or replaceable(root)):
            return
        raise error(f"{root} exists and is not {kind}; refusing to replace it")

    check()
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(root)
    tmp = Path(tempfile.mkdtemp(prefix=_staging_prefix(root) + f"{os.getpid()}-", dir=root.parent))
    try:
        yield tmp
        if not root.exists():
            os.rename(tmp, root)  # atomic on one filesystem; fails if another writer got there first
            return
        if not force:
            raise error(f"{root} appeared while writing; pass {force_hint} to replace it")
        check()
        old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
        os.rename(root, old / root.name)
        try:
            os.rename(tmp, root)
        except BaseException:
            os.rename(old / root.name, root)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _staging_prefix(root: Path) -> str:
    return f".{root.name}.tmp-{socket.gethostname()}-"


def remove_abandoned_staging(root: str | Path) -> list[Path]:
    """Remove temporary folders that a killed writer of ``root`` on this host left beside it
    (named ``.<root>.tmp-<host>-<pid>-*``, the process no longer running); returns them.
    Folders of live writers and of other hosts are left alone."""
    root = Path(root)
    prefix = _staging_prefix(root)
    removed = []
    for path in root.parent.glob(glob.escape(prefix) + "*"):
        pid = path.name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        pass
    return True
