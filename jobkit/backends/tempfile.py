"""``tempfile``: spool output to unnamed files on disk, with bounded RAM.

Bytes go from the job's pipe to the file with ``os.splice`` where the kernel
allows it, so they never pass through Python and RSS stays flat however much
a job writes.  The files are created with ``O_TMPFILE`` (or unlinked at once
where that is not supported): they never have a name, so nothing is left
behind even if the process dies, and their space is freed when the store is
closed.
"""

from __future__ import annotations

import errno
import os
import tempfile
import threading

import attrs

from jobkit.backends.fileio import pread_all, pread_into, splice_into
from jobkit.core.backend import OutputStore
from jobkit.core.hookspecs import RegisterBackend, hookimpl

__all__ = ["TempfileBackend", "TempfileStore"]



def _unnamed_file(directory: str | None) -> int:
    directory = directory or tempfile.gettempdir()
    o_tmpfile = getattr(os, "O_TMPFILE", 0)
    if o_tmpfile:
        try:
            return os.open(directory, o_tmpfile | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as exc:  # the file system may not support O_TMPFILE
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
    fd, path = tempfile.mkstemp(prefix="jobkit-", dir=directory)
    os.unlink(path)
    return fd


class TempfileStore(OutputStore):
    """One unnamed file; readers ``pread`` a private duplicate of its descriptor.

    The duplicate is what makes ``close`` safe against a concurrent reader:
    the reader's descriptor keeps the file alive and can never be recycled
    into some other open file under its feet.
    """

    def __init__(self, directory: str | None) -> None:
        self._fd = _unnamed_file(directory)
        self._written = 0
        self._lock = threading.Lock()
        self._splice = True

    def append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            count = os.write(self._fd, view)
            view = view[count:]
            self._written += count

    def fill_from(self, fd: int, limit: int) -> int:
        if self._splice:
            count = splice_into(fd, self._fd, limit)
            if count is not None:
                self._written += count
                return count
            self._splice = False
        return super().fill_from(fd, limit)

    @property
    def written(self) -> int:
        return self._written

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            if self._fd < 0:
                return b""
            fd = os.dup(self._fd)
        try:
            return pread_all(fd, offset, min(size, self._written - offset))
        finally:
            os.close(fd)

    def read_into(self, offset: int, buffer: memoryview) -> int:
        with self._lock:
            if self._fd < 0:
                return 0
            fd = os.dup(self._fd)
        try:
            return pread_into(fd, offset, buffer[: max(0, self._written - offset)])
        finally:
            os.close(fd)

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


@attrs.define
class TempfileBackend:
    """Spool each stream to an unnamed file.

    Attributes:
        directory: Where the files live (default: the system's temporary
            directory, honouring ``TMPDIR``).
    """

    directory: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.directory is not None:
            self.directory = os.fspath(self.directory)
            if not os.path.isdir(self.directory):
                raise ValueError(f"tempfile directory does not exist: {self.directory!r}")

    def open_store(self, job_id: str, stream: str) -> TempfileStore:
        return TempfileStore(self.directory)


@hookimpl(tryfirst=True)  # built-ins claim their names before any plugin
def jobkit_register_backends(register: RegisterBackend) -> None:
    register("tempfile", TempfileBackend)
