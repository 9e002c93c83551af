"""``file``: each stream in a named file under the pool's state folder, kept across restarts.

Bytes go from the job's pipe to its file with ``os.splice``, so they never
pass through Python: a job that writes gigabytes leaves the server's RSS
flat.  A file's offsets are the stream's absolute offsets.

With ``max_bytes``, the oldest bytes past the cap are dropped by punching a
hole at the start of the file (``fallocate(PUNCH_HOLE)``): the disk space is
freed, every kept byte stays at its absolute offset, and the first kept byte
can be found again after a restart with ``lseek(SEEK_DATA)``.  So the file
alone says what it holds, even after a crash: ``written`` is its size and
``dropped`` where its data starts.  Holes are punched in whole 4 KiB blocks,
so a stream keeps between ``max_bytes - 4 KiB`` and ``max_bytes`` bytes.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import struct
import termios
import threading
from pathlib import Path

import attrs

from jobkit.backends.fileio import pread_all, pread_into, splice_into
from jobkit.core.backend import OutputStore
from jobkit.core.hookspecs import RegisterBackend, hookimpl
from jobkit.core.models import STREAMS
from jobkit.core.sizes import parse_size

__all__ = ["MIN_MAX_BYTES", "FileBackend", "FileStore"]

#: The smallest cap: holes are punched in blocks, and a cap below a few
#: blocks would keep almost nothing.
MIN_MAX_BYTES = 64 << 10
_BLOCK = 4096
_PUNCH_HOLE, _KEEP_SIZE = 0x02, 0x01  # linux/falloc.h

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong)
_fallocate.restype = ctypes.c_int


def _punch_hole(fd: int, offset: int, length: int) -> None:
    """Free ``length`` bytes from ``offset`` on; the file keeps its size."""
    if _fallocate(fd, _PUNCH_HOLE | _KEEP_SIZE, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"cannot drop old output: {os.strerror(code)}")


def _data_start(fd: int, size: int) -> int:
    """The offset of the first byte not in a hole (``size`` if all is hole)."""
    try:
        return min(os.lseek(fd, 0, os.SEEK_DATA), size)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # nothing but holes (or empty)
            return size
        raise


class FileStore(OutputStore):
    """One named file.  While it is open for writing, readers ``pread`` a
    private duplicate of its descriptor (so `close` cannot pull it from
    under them); once closed, each read opens the file by name, so a
    finished job's store holds no descriptor at all.

    The file is created with the first byte, in the supervisor thread: most
    streams stay empty (stderr, or a job that prints nothing), and creating
    a file costs more than the rest of starting a job.  No file means an
    empty stream, after a restart too.
    """

    def __init__(self, path: Path, max_bytes: int | None, *, writable: bool,
                 resume: bool = False) -> None:
        self.path = path
        self._max = max_bytes
        self._fd = -1
        self._writable = writable
        self._resume = resume
        self._lock = threading.Lock()
        self._splice = True
        self._written = 0
        self._dropped = 0
        if resume or not writable:  # an existing file: it says what it holds
            with contextlib.suppress(FileNotFoundError):
                self._measure()

    def _create(self) -> None:
        truncate = 0 if self._resume else os.O_TRUNC
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | truncate | os.O_CLOEXEC, 0o600)
        if self._resume:
            os.lseek(fd, self._written, os.SEEK_SET)  # appends go after what is kept
        with self._lock:
            self._fd = fd

    def _measure(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            self._written, self._dropped = size, _data_start(fd, size)
        finally:
            os.close(fd)

    @property
    def written(self) -> int:
        return self._written

    @property
    def dropped(self) -> int:
        return self._dropped

    def append(self, data: bytes) -> None:
        if self._fd < 0:
            self._create()
        view = memoryview(data)
        while view:
            count = os.write(self._fd, view)
            view = view[count:]
            self._written += count
        self._trim()

    def fill_from(self, fd: int, limit: int) -> int:
        if self._fd < 0:
            # Readable with nothing in it is the end of the stream: no file needed.
            pending = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]
            if not pending:
                data = os.read(fd, limit)  # b"" at the end, or bytes that just came
                if data:
                    self.append(data)
                return len(data)
            self._create()
        if self._splice:
            count = splice_into(fd, self._fd, limit)
            if count is not None:
                self._written += count
                self._trim()
                return count
            self._splice = False
        return super().fill_from(fd, limit)

    def _trim(self) -> None:
        if self._max is None or self._written - self._dropped <= self._max:
            return
        cut = -(-(self._written - self._max) // _BLOCK) * _BLOCK  # round up to a block
        start = self._dropped
        # Published before the hole exists: a reader that read [start, ...)
        # then sees ``dropped`` past it and retries, never returns zeros.
        self._dropped = cut
        _punch_hole(self._fd, start, cut - start)

    def read(self, offset: int, size: int) -> bytes:
        fd = self._reader()
        if fd < 0:
            return b""  # deleted
        try:
            data = pread_all(fd, offset, min(size, self._written - offset))
        finally:
            os.close(fd)
        if self._dropped > offset:
            return b""  # punched while we read: the caller retries from `dropped`
        return data

    def read_into(self, offset: int, buffer: memoryview) -> int:
        fd = self._reader()
        if fd < 0:
            return 0
        try:
            count = pread_into(fd, offset, buffer[: max(0, self._written - offset)])
        finally:
            os.close(fd)
        return 0 if self._dropped > offset else count  # as in `read`

    def _reader(self) -> int:
        """A descriptor of the file to read, the caller's to close; -1 if it was deleted."""
        with self._lock:
            fd = os.dup(self._fd) if self._fd >= 0 else -1
        if fd < 0:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return -1
        return fd

    def close(self) -> None:
        """Close the file; its bytes stay, readable by name."""
        with self._lock:
            fd, self._fd = self._fd, -1
            self._writable = False
        if fd >= 0:
            os.close(fd)


@attrs.define
class FileBackend:
    """Keep each stream in ``DIRECTORY/ID.stdout`` and ``ID.stderr``.

    Attributes:
        directory: Where the files live.  Default: ``output/`` in the
            pool's ``state_dir`` (the backend needs one or the other).
        max_bytes: Keep at most this many of each stream's newest bytes
            (an int or a size such as ``"1G"``; at least 64 KiB); None keeps all.
    """

    directory: str | None = None
    max_bytes: int | str | None = None
    _root: Path | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        if self.max_bytes is not None:
            self.max_bytes = parse_size("max_bytes", self.max_bytes)
            if self.max_bytes < MIN_MAX_BYTES:
                raise ValueError(f"max_bytes must be at least 64K, not {self.max_bytes}")
        if self.directory is not None:
            self.directory = os.fspath(self.directory)
            if not os.path.isdir(self.directory):
                raise ValueError(f"file backend directory does not exist: {self.directory!r}")
            self._root = Path(self.directory)

    def attach(self, state_dir: Path | None) -> None:
        """Called by the pool: put the files in its state folder unless told otherwise."""
        if self._root is not None:
            return
        if state_dir is None:
            raise ValueError("the file backend needs a pool with a state_dir, or a directory")
        self._root = state_dir / "output"
        self._root.mkdir(mode=0o700, exist_ok=True)

    def _path(self, job_id: str, stream: str) -> Path:
        # The pool hands us ids of its own making; check anyway, since they
        # become file names.
        if not job_id.isdigit() or stream not in STREAMS or self._root is None:
            raise ValueError(f"no file for job {job_id!r} stream {stream!r}")
        return self._root / f"{job_id}.{stream}"

    def open_store(self, job_id: str, stream: str) -> FileStore:
        assert self.max_bytes is None or isinstance(self.max_bytes, int)
        return FileStore(self._path(job_id, stream), self.max_bytes, writable=True)

    def reopen_store(self, job_id: str, stream: str) -> FileStore:
        """The store of a job whose output was written earlier (maybe by another process)."""
        return FileStore(self._path(job_id, stream), None, writable=False)

    def resume_store(self, job_id: str, stream: str) -> FileStore:
        """A store that appends to the output written earlier (a re-attached job's)."""
        assert self.max_bytes is None or isinstance(self.max_bytes, int)
        return FileStore(self._path(job_id, stream), self.max_bytes, writable=True, resume=True)

    def delete_output(self, job_id: str) -> None:
        """Remove a job's files."""
        for stream in STREAMS:
            with contextlib.suppress(FileNotFoundError):
                self._path(job_id, stream).unlink()


@hookimpl(tryfirst=True)  # built-ins claim their names before any plugin
def jobkit_register_backends(register: RegisterBackend) -> None:
    register("file", FileBackend)
