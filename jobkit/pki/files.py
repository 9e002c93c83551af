"""Writing the PKI's files safely: private folders, exclusive or atomic writes, a lock.

Standard library only.  Every file of the PKI is written here, so that each
one gets the same care: the mode is set before any data is written, nothing
existing is overwritten unless asked, and a replaced file is swapped in
atomically.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from jobkit.pki.layout import DIR_MODE, AlreadyExists

__all__ = ["locked", "make_dir", "refuse_existing", "write_file"]


def make_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) 0700; leave an existing folder as it is."""
    if path.is_dir():
        return
    if not path.parent.is_dir():
        make_dir(path.parent)
    try:
        # The mode is given at creation, so the folder is never more open than
        # 0700; the chmod only restores owner bits a strict umask removed.
        path.mkdir(DIR_MODE)
    except FileExistsError:
        if not path.is_dir():
            raise
        return
    path.chmod(DIR_MODE)


def write_file(path: Path, data: bytes, mode: int, *, force: bool) -> None:
    """Write ``data`` to a new file ``path`` created with ``mode``.

    Without ``force`` the file is created with O_EXCL (which also refuses a
    symlink at ``path``). With ``force`` it is written to a fresh temporary name
    in the same folder, then renamed over ``path``: readers see the old file or
    the new one, and a symlink at ``path`` is replaced rather than followed.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    if force:
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    else:
        temporary = None
        try:
            fd = os.open(path, flags, mode)
        except FileExistsError:
            raise AlreadyExists(path) from None
    try:
        with os.fdopen(fd, "wb") as file:
            # mkstemp makes 0600 files; os.open may have lost owner bits to the
            # umask. fchmod on our own fd cannot widen anything to other users
            # before the data is written, so there is no window.
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if temporary is not None:
            Path(temporary).replace(path)
            temporary = None
    except BaseException:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        raise


def refuse_existing(paths: Iterable[Path]) -> None:
    """Raise `AlreadyExists` for the first of ``paths`` that exists (a dangling symlink too)."""
    for path in paths:
        if os.path.lexists(path):
            raise AlreadyExists(path)


@contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` itself while the block runs.

    The CA's record is read, changed and replaced (renamed over) under it,
    so two ``jobkit certs`` commands, or two test processes issuing clients
    from one PKI, never lose each other's changes.  Locking the folder, not
    the file, survives the rename.
    """
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
