"""The output backend contract.

A *backend* is configured once per pool (or per job that overrides the pool's
choice) and opens one *store* per output stream of every job::

    backend = RingBackend(capacity=65536)      # options validated here
    store = backend.open_store("7", "stdout")  # one per job stream

Threading and ordering guarantees the pool gives a store:

* ``append`` and ``fill_from`` are called by one thread at a time, in the
  order the bytes were written: the pool's supervisor for a local job, the
  executor's thread for a job another executor runs (``append`` only; see
  `jobkit.core.executor`).
* ``read``, ``written`` and ``dropped`` may be called from any number of other
  threads at any moment, concurrently with ``append``.  They must never block
  for long (a slow reader must not stall the supervisor, which serves every
  job) and must only return bytes from ``[dropped, written)`` as already
  published: update ``written`` *after* the bytes are readable.
* ``close`` is called exactly once, when the job is deleted or the pool
  closes, after the last ``append``.  It may race with a ``read`` in another
  thread: that read must not crash or see another file's data; it may return
  ``b""``.
* An exception raised by ``append`` or ``fill_from`` (``OSError`` for a full
  disk, or any bug) is recorded on the job as ``JobStatus.output_error``; the
  pool then discards the stream's remaining output so the job never blocks
  on a full pipe.

A *durable* backend (`DurableBackend`, e.g. ``file``) keeps a job's output
after its store is closed, across restarts of the pool: ``close`` then only
releases what the store holds open, `DurableBackend.reopen_store` reads a
finished job's output back, and `DurableBackend.delete_output` removes it
when the job is deleted.  The pool closes a durable job's stores as soon as
the job has ended and both streams are drained, so that a finished job costs
the pool no descriptor and no memory.

A durable backend that can also append to output written earlier
(`ResumableBackend`, e.g. ``file``) lets a reopened pool carry on storing
the output of a job its executor still runs (a ``ray`` job re-attached
after a restart) without fetching what it kept again.

Backends are registered through the ``jobkit_register_backends`` hook (see
`jobkit.core.hookspecs`); a backend is any callable taking keyword options and
returning an `OutputBackend`, usually the class itself.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = ["DurableBackend", "OutputBackend", "OutputStore", "ResumableBackend"]


class OutputStore(abc.ABC):
    """Storage for one stream of one job. See the module docstring for the rules."""

    @abc.abstractmethod
    def append(self, data: bytes) -> None:
        """Store ``data`` (never empty) after everything appended before."""

    @abc.abstractmethod
    def read(self, offset: int, size: int) -> bytes:
        """Return up to ``size`` bytes from absolute ``offset``.

        The pool only asks for ranges inside ``[dropped, written)`` as it
        last saw them.  A store that drops data returns ``b""`` when
        ``offset`` was dropped meanwhile; the pool then retries from the new
        ``dropped``.  Otherwise it returns every byte asked for.
        """

    def read_into(self, offset: int, buffer: memoryview) -> int:
        """Copy bytes from absolute ``offset`` into ``buffer``; return how many.

        The same rules as `read` (``0`` where `read` would give ``b""``),
        for readers that reuse one buffer: the server's large writes.  The
        default copies what `read` returns; a store that can fill the buffer
        itself (``preadv`` from a file) overrides it and saves a copy and an
        allocation per chunk.
        """
        data = self.read(offset, len(buffer))
        buffer[: len(data)] = data
        return len(data)

    @property
    @abc.abstractmethod
    def written(self) -> int:
        """Total bytes appended so far: the absolute offset of the end."""

    @property
    def dropped(self) -> int:
        """Bytes at the start that are no longer kept (0 for a store that keeps all)."""
        return 0

    def fill_from(self, fd: int, limit: int) -> int:
        """Move up to ``limit`` bytes from the non-blocking pipe ``fd`` into the store.

        Return the number of bytes moved, 0 at end of file; let
        ``BlockingIOError`` through when the pipe is empty.  The default reads
        and calls `append`; a store that can take bytes without copying them
        through Python (``os.splice`` into a file, say) overrides it.
        """
        data = os.read(fd, limit)
        if data:
            self.append(data)
        return len(data)

    def close(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Free the storage (a durable store: release it, keep the bytes).

        Called once; later reads may return ``b""`` (a durable store's must not).
        """


@runtime_checkable
class OutputBackend(Protocol):
    """A configured kind of storage that opens one `OutputStore` per job stream."""

    def open_store(self, job_id: str, stream: str) -> OutputStore:
        """Return a new empty store for ``stream`` (``"stdout"`` or ``"stderr"``) of a job.

        May raise ``OSError`` (the job then ends in ``State.ERROR``).
        """
        ...


@runtime_checkable
class DurableBackend(OutputBackend, Protocol):
    """A backend whose output outlives its stores and the process that wrote it."""

    def attach(self, state_dir: Path | None) -> None:
        """Called once by the pool before the first store: its state folder, or None.

        Raise ``ValueError`` if the backend cannot work with it.
        """
        ...

    def reopen_store(self, job_id: str, stream: str) -> OutputStore:
        """A read-only store of output written earlier, perhaps by another process.

        Its ``written`` and ``dropped`` say what is still kept; reading it
        must hold no descriptor between calls.
        """
        ...

    def delete_output(self, job_id: str) -> None:
        """Remove both streams' output of a job; no error if there is none."""
        ...


@runtime_checkable
class ResumableBackend(DurableBackend, Protocol):
    """A durable backend that can append to output written earlier."""

    def resume_store(self, job_id: str, stream: str) -> OutputStore:
        """A writable store whose ``written`` and ``dropped`` say what is kept;
        appends go after it.  An empty store if nothing was written."""
        ...
