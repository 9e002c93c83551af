"""``logfiles``: a third-party jobkit output backend, as a plugin.

Each stream goes to ``DIRECTORY/<prefix>-<job id>.<stream>.log`` and, unlike
jobkit's ``tempfile`` backend, the files stay after the job is deleted (set
``keep=False`` to remove them), so a job's output outlives the pool as a
log.  Install it and use it by name::

    pip install ./examples/jobkit-logfiles
    JobPool("logfiles", {"directory": "/var/log/myjobs"})
"""

from __future__ import annotations

import os
import threading
import time

import jobkit
from jobkit import OutputStore


class LogFileStore(OutputStore):
    def __init__(self, path: str, keep: bool) -> None:
        self.path = path
        self._keep = keep
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._written = 0
        self._lock = threading.Lock()

    def append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            count = os.write(self._fd, view)
            view = view[count:]
            self._written += count

    @property
    def written(self) -> int:
        return self._written

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:  # close() must not recycle the descriptor under us
            if self._fd < 0:
                return b""
            return os.pread(self._fd, size, offset)

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
        os.close(fd)
        if not self._keep:
            os.unlink(self.path)


class LogFileBackend:
    def __init__(self, directory: str, keep: bool = True) -> None:
        if not os.path.isdir(directory):
            raise ValueError(f"logfiles directory does not exist: {directory!r}")
        self.directory = directory
        self.keep = keep
        # Job ids restart at 1 in every pool: a per-pool prefix keeps names apart.
        self.prefix = time.strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}-{id(self):x}"

    def open_store(self, job_id: str, stream: str) -> LogFileStore:
        name = f"{self.prefix}-{job_id}.{stream}.log"
        return LogFileStore(os.path.join(self.directory, name), self.keep)


@jobkit.hookimpl
def jobkit_register_backends(register):  # type: ignore[no-untyped-def]
    register("logfiles", LogFileBackend)
